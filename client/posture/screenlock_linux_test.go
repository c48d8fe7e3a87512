package posture

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

func TestSessionLock(t *testing.T) {
	gnome := session{id: "2", user: "alice", typ: "wayland", class: "user", desktop: "GNOME"}
	kde := session{id: "3", user: "bob", typ: "x11", class: "user", desktop: "KDE"}
	locks := gnomeLock{enabled: true, idleDelay: 5 * time.Minute}
	noSettings := errors.New("gsettings: not found")
	tests := []struct {
		name    string
		s       session
		idle    time.Duration
		idleErr error
		g       gnomeLock
		gErr    error
		want    api.Fact
		detail  string
	}{
		{"GNOME locks", gnome, 0, nil, locks, nil, api.Yes, "GNOME locks after 5m0s idle"},
		{"GNOME lock off", gnome, 0, nil, gnomeLock{enabled: false, idleDelay: time.Minute}, nil, api.No, "lock-enabled false"},
		{"GNOME never idle", gnome, 0, nil, gnomeLock{enabled: true}, nil, api.No, "idle-delay 0"},
		{"GNOME lock screen disabled", gnome, time.Minute, nil, gnomeLock{disabled: true, enabled: true, idleDelay: time.Minute}, nil, api.No, "disable-lock-screen"},
		{"logind locks GNOME", gnome, 10 * time.Minute, nil, gnomeLock{enabled: false}, nil, api.Yes, "systemd-logind locks sessions idle for 10m0s"},
		{"logind locks KDE", kde, 10 * time.Minute, nil, gnomeLock{}, noSettings, api.Yes, "IdleAction=lock"},
		{"KDE alone", kde, 0, nil, gnomeLock{}, noSettings, api.Unknown, "the screen lock of this desktop is not detectable, and systemd-logind does not lock idle sessions"},
		{"GNOME unreadable", gnome, 0, errors.New("loginctl: bus"), gnomeLock{}, noSettings, api.Unknown, "GNOME's settings cannot be read (gsettings: not found), and systemd-logind's idle action cannot be read: loginctl: bus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, detail := sessionLock(tt.s, tt.idle, tt.idleErr, tt.g, tt.gErr)
			if got != tt.want {
				t.Errorf("sessionLock() = %s (%s), want %s", got, detail, tt.want)
			}
			contains(t, "detail", detail, tt.detail)
		})
	}
}

// fakeDesktop answers loginctl and gsettings as a machine with the given
// sessions would. Values are keyed by the tool's command line; a missing
// one fails like an absent program.
type fakeDesktop map[string]string

func (d fakeDesktop) output(_ context.Context, t tool) ([]byte, error) {
	out, ok := d[t.String()]
	if !ok {
		return nil, fmt.Errorf("%s: not in this test", t)
	}
	if msg, ok := strings.CutPrefix(out, "!"); ok {
		return nil, errors.New(msg)
	}
	return []byte(out), nil
}

const (
	listSessions = "loginctl list-sessions --no-legend --no-pager"
	showManager  = "loginctl show-session --no-pager -p IdleAction -p IdleActionUSec"
	showProps    = " --no-pager -p Id -p User -p Name -p Type -p Class -p Desktop -p State"
	lockdown     = "gsettings get org.gnome.desktop.lockdown disable-lock-screen"
	lockEnabled  = "gsettings get org.gnome.desktop.screensaver lock-enabled"
	idleDelay    = "gsettings get org.gnome.desktop.session idle-delay"
)

func showSession(id, props string) (string, string) {
	return "loginctl show-session " + id + showProps, props
}

func TestScreenLock(t *testing.T) {
	uid := os.Getuid() // the GNOME user is us, so gsettings runs as is
	gnomeSession := fmt.Sprintf("Id=2\nUser=%d\nName=alice\nType=wayland\nClass=user\nDesktop=GNOME\nState=active\n", uid)
	with := func(d fakeDesktop, kv ...string) fakeDesktop {
		out := fakeDesktop{}
		for k, v := range d {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	k, v := showSession("2", gnomeSession)
	gnomeDesktop := fakeDesktop{
		listSessions: "      2 1000 alice seat0 tty2\n",
		k:            v,
		showManager:  "IdleAction=ignore\nIdleActionUSec=1800000000\n",
		lockdown:     "false\n",
		lockEnabled:  "true\n",
		idleDelay:    "uint32 300\n",
	}
	tests := []struct {
		name   string
		d      fakeDesktop
		want   api.Fact
		detail string
	}{
		{
			name:   "headless server",
			d:      fakeDesktop{listSessions: "    c1  0 root  - pts/0\n", "loginctl show-session c1" + showProps: "Id=c1\nUser=0\nName=root\nType=tty\nClass=user\nState=active\n"},
			want:   api.Unknown,
			detail: "no graphical session",
		},
		{
			name:   "no sessions at all",
			d:      fakeDesktop{listSessions: ""},
			want:   api.Unknown,
			detail: "no graphical session",
		},
		{
			name:   "no logind",
			d:      fakeDesktop{listSessions: "!loginctl: exit status 1: System has not been booted with systemd"},
			want:   api.Unknown,
			detail: "no graphical session found: cannot list login sessions: loginctl: exit status 1",
		},
		{
			name:   "greeter only",
			d:      fakeDesktop{listSessions: "c1 130 gdm seat0 tty1\n", "loginctl show-session c1" + showProps: "Id=c1\nUser=130\nName=gdm\nType=wayland\nClass=greeter\nState=online\n"},
			want:   api.Unknown,
			detail: "no graphical session",
		},
		{
			name:   "GNOME that locks",
			d:      gnomeDesktop,
			want:   api.Yes,
			detail: "session 2 (alice, GNOME on wayland): GNOME locks after 5m0s idle",
		},
		{
			name:   "GNOME that does not lock",
			d:      with(gnomeDesktop, lockEnabled, "false\n"),
			want:   api.No,
			detail: "lock-enabled false",
		},
		{
			name:   "GNOME without a settings backend",
			d:      with(gnomeDesktop, lockEnabled, "GLib-GIO-Message: 10:00:00.000: Using the 'memory' GSettings backend.  Your settings will not be saved or shared with other applications.\ntrue\n"),
			want:   api.Unknown,
			detail: "gsettings has no settings backend",
		},
		{
			name:   "GNOME settings unreadable but logind locks",
			d:      with(gnomeDesktop, idleDelay, "!gsettings: No such schema", showManager, "IdleAction=lock\nIdleActionUSec=600000000\n"),
			want:   api.Yes,
			detail: "systemd-logind locks sessions idle for 10m0s",
		},
		{
			name: "two sessions, one unknown",
			d: with(gnomeDesktop,
				listSessions, "2 1000 alice seat0 tty2\n3 1001 bob - -\n",
				"loginctl show-session 3"+showProps, "Id=3\nUser=1001\nName=bob\nType=x11\nClass=user\nDesktop=KDE\nState=online\n"),
			want:   api.Unknown,
			detail: "session 3 (bob, KDE on x11): the screen lock of this desktop is not detectable",
		},
		{
			name:   "session that cannot be shown",
			d:      with(gnomeDesktop, k, "!loginctl: exit status 1"),
			want:   api.Unknown,
			detail: "cannot list login sessions: session 2: loginctl: exit status 1",
		},
		{
			name:   "closing session",
			d:      with(gnomeDesktop, k, strings.Replace(gnomeSession, "State=active", "State=closing", 1)),
			want:   api.Unknown,
			detail: "no graphical session",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCollector(Config{})
			c.output = tt.d.output
			got, detail := c.screenLock(context.Background())
			if got != tt.want {
				t.Errorf("screenLock() = %s (%s), want %s", got, detail, tt.want)
			}
			contains(t, "detail", detail, tt.detail)
		})
	}
}

func TestGnomeSettingsAsAnotherUser(t *testing.T) {
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("no user nobody: %v", err)
	}
	uid, _ := strconv.ParseUint(nobody.Uid, 10, 32)
	var asked []tool
	c := newCollector(Config{})
	c.output = func(_ context.Context, t tool) ([]byte, error) {
		asked = append(asked, t)
		if t.argv[len(t.argv)-1] == "idle-delay" {
			return []byte("uint32 60\n"), nil
		}
		return []byte("true\n"), nil
	}
	s := session{id: "2", uid: uint32(uid), user: "nobody", typ: "x11", class: "user", desktop: "GNOME"}

	c.euid = int(uid) + 1 // neither root nor the session's user
	if _, err := c.gnomeSettings(context.Background(), s); err == nil || !strings.Contains(err.Error(), "cannot read the settings of nobody") {
		t.Errorf("gnomeSettings() as another user: %v", err)
	}
	if len(asked) != 0 {
		t.Errorf("ran %v as another user", asked)
	}

	c.euid = 0
	g, err := c.gnomeSettings(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if want := (gnomeLock{disabled: true, enabled: true, idleDelay: time.Minute}); g != want {
		t.Errorf("gnomeSettings() = %+v, want %+v", g, want)
	}
	if len(asked) != 3 {
		t.Fatalf("asked %d settings, want 3", len(asked))
	}
	for _, a := range asked {
		if !a.asUser || a.uid != uint32(uid) {
			t.Errorf("%s runs as user %v %d, want %d", a, a.asUser, a.uid, uid)
		}
	}
	env := strings.Join(asked[0].env, " ")
	contains(t, "env", env, fmt.Sprintf("DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/%d/bus", uid))
	contains(t, "env", env, "HOME="+nobody.HomeDir)
}

func TestParseIdleLock(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{"IdleAction=lock\nIdleActionUSec=1800000000\n", 30 * time.Minute, false},
		{"IdleAction=ignore\nIdleActionUSec=1800000000\n", 0, false},
		{"IdleAction=suspend\nIdleActionUSec=1800000000\n", 0, false},
		{"IdleAction=lock\nIdleActionUSec=infinity\n", 0, true},
		{"IdleAction=lock\nIdleActionUSec=99999999999999999999\n", 0, true},
		{"", 0, true},
	}
	for _, tt := range tests {
		got, err := parseIdleLock(parseProperties([]byte(tt.in)))
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("parseIdleLock(%q) = %v, %v; want %v (error %v)", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestGSettingsValues(t *testing.T) {
	if v, err := gsettingsValue([]byte("\nuint32 300\n")); v != "uint32 300" || err != nil {
		t.Errorf("gsettingsValue() = %q, %v", v, err)
	}
	if _, err := gsettingsValue([]byte("\n")); err == nil {
		t.Error("gsettingsValue(blank) accepted it")
	}
	if d, err := parseGSeconds("uint32 300"); d != 5*time.Minute || err != nil {
		t.Errorf("parseGSeconds() = %v, %v", d, err)
	}
	if _, err := parseGSeconds("300 seconds"); err == nil {
		t.Error("parseGSeconds(junk) accepted it")
	}
	if _, err := parseGBool("yes"); err == nil {
		t.Error("parseGBool(yes) accepted it")
	}
}
