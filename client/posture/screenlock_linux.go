package posture

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

// maxSessions caps the login sessions inspected.
const maxSessions = 64

// session is a systemd-logind login session.
type session struct {
	id      string
	uid     uint32
	user    string
	typ     string // "x11", "wayland", "tty", ...
	class   string // "user", "greeter", ...
	desktop string // XDG_SESSION_DESKTOP: "GNOME", "ubuntu", "KDE"
	state   string // "active", "online", "closing"
}

// graphical reports whether s is a person's graphical session, whose
// screen can lock.
func (s session) graphical() bool {
	return (s.typ == "x11" || s.typ == "wayland" || s.typ == "mir") &&
		s.class == "user" && s.state != "closing"
}

func (s session) String() string {
	d := s.desktop
	if d == "" {
		d = "unnamed desktop"
	}
	return fmt.Sprintf("session %s (%s, %s on %s)", s.id, s.user, d, s.typ)
}

// gnome reports whether s runs GNOME, whose settings gsettings reads.
// Ubuntu and Pop!_OS name their GNOME sessions after themselves.
func (s session) gnome() bool {
	d := strings.ToLower(s.desktop)
	return strings.Contains(d, "gnome") || d == "ubuntu" || d == "pop"
}

// gnomeLock is a GNOME user's screen lock settings.
type gnomeLock struct {
	disabled  bool          // org.gnome.desktop.lockdown disable-lock-screen
	enabled   bool          // org.gnome.desktop.screensaver lock-enabled
	idleDelay time.Duration // org.gnome.desktop.session idle-delay; 0 never idles
}

// screenLock reports whether every graphical session locks itself when
// idle. Without a graphical session there is no screen to lock, and
// nothing to claim: Unknown.
func (c *collector) screenLock(ctx context.Context) (api.Fact, string) {
	all, err := c.sessions(ctx)
	if err != nil {
		return api.Unknown, "no graphical session found: cannot list login sessions: " + err.Error()
	}
	var sessions []session
	for _, s := range all {
		if s.graphical() {
			sessions = append(sessions, s)
		}
	}
	if len(sessions) == 0 {
		return api.Unknown, "no graphical session"
	}
	idle, idleErr := c.logindIdleLock(ctx)
	fact := api.Yes
	var details []string
	for _, s := range sessions {
		var g gnomeLock
		gErr := errors.New("not a GNOME session")
		if s.gnome() {
			g, gErr = c.gnomeSettings(ctx, s)
		}
		f, d := sessionLock(s, idle, idleErr, g, gErr)
		fact = and(fact, f)
		details = append(details, s.String()+": "+d)
	}
	return fact, strings.Join(details, "; ")
}

// sessionLock decides whether session s locks when idle, given logind's
// idle action (idle > 0: logind locks every session after idle) and, for
// GNOME, the user's settings (gErr set when they are not known).
func sessionLock(s session, idle time.Duration, idleErr error, g gnomeLock, gErr error) (api.Fact, string) {
	if gErr == nil && g.disabled {
		return api.No, "GNOME's lock screen is disabled (org.gnome.desktop.lockdown disable-lock-screen)"
	}
	if idle > 0 {
		return api.Yes, fmt.Sprintf("systemd-logind locks sessions idle for %v (IdleAction=lock)", idle)
	}
	if gErr == nil {
		switch {
		case !g.enabled:
			return api.No, "GNOME does not lock when idle (org.gnome.desktop.screensaver lock-enabled false)"
		case g.idleDelay <= 0:
			return api.No, "GNOME never goes idle (org.gnome.desktop.session idle-delay 0)"
		}
		return api.Yes, fmt.Sprintf("GNOME locks after %v idle", g.idleDelay)
	}
	why := "systemd-logind does not lock idle sessions"
	if idleErr != nil {
		why = "systemd-logind's idle action cannot be read: " + idleErr.Error()
	}
	if s.gnome() {
		return api.Unknown, "GNOME's settings cannot be read (" + gErr.Error() + "), and " + why
	}
	return api.Unknown, "the screen lock of this desktop is not detectable, and " + why
}

// sessions lists the login sessions through loginctl.
func (c *collector) sessions(ctx context.Context) ([]session, error) {
	out, err := c.output(ctx, tool{argv: []string{"loginctl", "list-sessions", "--no-legend", "--no-pager"}})
	if err != nil {
		return nil, err
	}
	var sessions []session
	for line := range strings.SplitSeq(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(sessions) == maxSessions {
			return nil, fmt.Errorf("more than %d sessions", maxSessions)
		}
		props, err := c.output(ctx, tool{argv: []string{"loginctl", "show-session", f[0], "--no-pager",
			"-p", "Id", "-p", "User", "-p", "Name", "-p", "Type", "-p", "Class", "-p", "Desktop", "-p", "State"}})
		if err != nil {
			return nil, fmt.Errorf("session %s: %w", f[0], err)
		}
		s, err := parseSession(parseProperties(props))
		if err != nil {
			return nil, fmt.Errorf("session %s: %w", f[0], err)
		}
		sessions = append(sessions, s)
	}
	return sessions, nil
}

func parseSession(p map[string]string) (session, error) {
	uid, err := strconv.ParseUint(p["User"], 10, 32)
	if err != nil {
		return session{}, fmt.Errorf("bad User %q", p["User"])
	}
	return session{
		id:      p["Id"],
		uid:     uint32(uid),
		user:    p["Name"],
		typ:     p["Type"],
		class:   p["Class"],
		desktop: p["Desktop"],
		state:   p["State"],
	}, nil
}

// parseProperties parses systemctl/loginctl "show" output: Key=Value
// lines.
func parseProperties(out []byte) map[string]string {
	p := make(map[string]string)
	for line := range strings.SplitSeq(string(out), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			p[k] = v
		}
	}
	return p
}

// logindIdleLock returns how long sessions idle before systemd-logind
// locks them, or 0 when it does not (IdleAction is not lock).
func (c *collector) logindIdleLock(ctx context.Context) (time.Duration, error) {
	// show-session without a session shows logind's own properties.
	out, err := c.output(ctx, tool{argv: []string{"loginctl", "show-session", "--no-pager", "-p", "IdleAction", "-p", "IdleActionUSec"}})
	if err != nil {
		return 0, err
	}
	return parseIdleLock(parseProperties(out))
}

func parseIdleLock(p map[string]string) (time.Duration, error) {
	action, ok := p["IdleAction"]
	if !ok {
		return 0, errors.New("no IdleAction")
	}
	if action != "lock" {
		return 0, nil
	}
	usec, err := strconv.ParseUint(p["IdleActionUSec"], 10, 63)
	if err != nil || usec > uint64(time.Duration(1<<63-1)/time.Microsecond) {
		return 0, fmt.Errorf("bad IdleActionUSec %q", p["IdleActionUSec"])
	}
	return time.Duration(usec) * time.Microsecond, nil
}

// gnomeSettings reads a GNOME session's lock settings with gsettings, run
// as the session's user with its session bus.
func (c *collector) gnomeSettings(ctx context.Context, s session) (gnomeLock, error) {
	u, err := user.LookupId(strconv.FormatUint(uint64(s.uid), 10))
	if err != nil {
		return gnomeLock{}, fmt.Errorf("look up user %d: %w", s.uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return gnomeLock{}, fmt.Errorf("user %s: bad gid %q", u.Username, u.Gid)
	}
	t := tool{
		env: []string{
			"PATH=" + os.Getenv("PATH"),
			"HOME=" + u.HomeDir,
			"USER=" + u.Username,
			"LOGNAME=" + u.Username,
			fmt.Sprintf("XDG_RUNTIME_DIR=/run/user/%d", s.uid),
			fmt.Sprintf("DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/%d/bus", s.uid),
		},
		combined: true,
	}
	switch {
	case c.euid == int(s.uid):
	case c.euid == 0:
		t.asUser, t.uid, t.gid = true, s.uid, uint32(gid)
	default:
		return gnomeLock{}, fmt.Errorf("this client runs as uid %d and cannot read the settings of %s", c.euid, u.Username)
	}
	get := func(schema, key string) (string, error) {
		t.argv = []string{"gsettings", "get", schema, key}
		out, err := c.output(ctx, t)
		if err != nil {
			return "", err
		}
		return gsettingsValue(out)
	}
	var g gnomeLock
	v, err := get("org.gnome.desktop.lockdown", "disable-lock-screen")
	if err == nil {
		g.disabled, err = parseGBool(v)
	}
	if err == nil {
		v, err = get("org.gnome.desktop.screensaver", "lock-enabled")
	}
	if err == nil {
		g.enabled, err = parseGBool(v)
	}
	if err == nil {
		v, err = get("org.gnome.desktop.session", "idle-delay")
	}
	if err == nil {
		g.idleDelay, err = parseGSeconds(v)
	}
	return g, err
}

// gsettingsValue returns the value gsettings printed, refusing one that
// came from its in-memory backend: that is the schema's default, not the
// user's setting.
func gsettingsValue(out []byte) (string, error) {
	var last string
	for line := range strings.SplitSeq(string(out), "\n") {
		if strings.Contains(line, "'memory' GSettings backend") {
			return "", errors.New("gsettings has no settings backend (it fell back to memory)")
		}
		if line = strings.TrimSpace(line); line != "" {
			last = line
		}
	}
	if last == "" {
		return "", errors.New("gsettings printed nothing")
	}
	return last, nil
}

func parseGBool(v string) (bool, error) {
	switch v {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, fmt.Errorf("not a boolean: %q", v)
}

// parseGSeconds parses a GVariant uint32 of seconds ("uint32 300").
func parseGSeconds(v string) (time.Duration, error) {
	n, err := strconv.ParseUint(strings.TrimPrefix(v, "uint32 "), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("not a number of seconds: %q", v)
	}
	return time.Duration(n) * time.Second, nil
}
