package relay

import (
	"crypto/hmac"
	"crypto/sha1" //nolint:gosec // TURN REST API credentials are HMAC-SHA1 by definition
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Role of a relay credential.
type Role string

// Credential roles.
const (
	// RoleGateway is a gateway's credential: its allocation may only talk
	// to other allocations on the same relay.
	RoleGateway Role = "gw"
	// RoleClient is a client's per-grant credential: its allocation may
	// only talk to the one relayed address in [Claims.Peer].
	RoleClient Role = "cl"
)

// Claims is what a credential's username says.
type Claims struct {
	// Expires is when the credential stops being accepted. The username
	// carries whole seconds only.
	Expires time.Time
	// Role says which restriction applies.
	Role Role
	// Subject is the gateway ID (RoleGateway) or the grant ID (RoleClient).
	Subject string
	// Peer is the relayed address of the granted gateway, the only address
	// a RoleClient allocation may exchange datagrams with. It is the zero
	// value for RoleGateway.
	Peer netip.AddrPort
}

// MinSecretBytes is the shortest shared secret Issue and New accept.
const MinSecretBytes = 16

// Limits of the username format. STUN caps USERNAME at 513 bytes.
const (
	maxUsernameBytes = 513
	maxSubjectBytes  = 128
)

// ErrBadUsername is returned (wrapped) by ParseUsername for a username that
// is not one of ours.
var ErrBadUsername = errors.New("bad relay username")

// Issue returns TURN REST API credentials for c: username
// "<unix-expiry>:gw/<gateway ID>" or "<unix-expiry>:cl/<grant ID>/<peer>",
// and password base64(HMAC-SHA1(secret, username)). secret must be at least
// [MinSecretBytes] long. Issue does not check that c.Expires is in the
// future; the relay does.
func Issue(secret []byte, c Claims) (username, password string, err error) {
	if len(secret) < MinSecretBytes {
		return "", "", fmt.Errorf("relay credentials: secret is %d bytes, want at least %d", len(secret), MinSecretBytes)
	}
	exp := c.Expires.Unix()
	if c.Expires.IsZero() || exp <= 0 {
		return "", "", fmt.Errorf("relay credentials: expiry %v is not after 1970", c.Expires)
	}
	var b strings.Builder
	b.WriteString(strconv.FormatInt(exp, 10))
	b.WriteByte(':')
	b.WriteString(string(c.Role))
	b.WriteByte('/')
	b.WriteString(c.Subject)
	switch c.Role {
	case RoleGateway:
		if c.Peer != (netip.AddrPort{}) {
			return "", "", fmt.Errorf("relay credentials: a gateway credential has no peer (got %v)", c.Peer)
		}
	case RoleClient:
		b.WriteByte('/')
		b.WriteString(c.Peer.String())
	}
	username = b.String()
	// Parsing what we built validates every part with the same code the
	// relay runs, so Issue cannot hand out a credential the relay refuses.
	if _, err := ParseUsername(username); err != nil {
		return "", "", fmt.Errorf("relay credentials: %w", err)
	}
	return username, password64(secret, username), nil
}

// password64 is the TURN REST API password for username.
func password64(secret []byte, username string) string {
	mac := hmac.New(sha1.New, secret)
	mac.Write([]byte(username))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// ParseUsername parses and validates the shape of a username (not the HMAC,
// not the expiry). Every accepted username is the one Issue produces for
// the returned Claims: there is exactly one spelling of each.
func ParseUsername(username string) (Claims, error) {
	if len(username) > maxUsernameBytes {
		return Claims{}, fmt.Errorf("%w: longer than %d bytes", ErrBadUsername, maxUsernameBytes)
	}
	expiry, user, ok := strings.Cut(username, ":")
	if !ok {
		return Claims{}, fmt.Errorf("%w: want EXPIRY:ROLE/…", ErrBadUsername)
	}
	exp, err := parseExpiry(expiry)
	if err != nil {
		return Claims{}, err
	}
	role, rest, _ := strings.Cut(user, "/")
	c := Claims{Expires: time.Unix(exp, 0).UTC(), Role: Role(role)}
	switch c.Role {
	case RoleGateway:
		c.Subject = rest
	case RoleClient:
		var peer string
		c.Subject, peer, ok = strings.Cut(rest, "/")
		if !ok {
			return Claims{}, fmt.Errorf("%w: want EXPIRY:cl/GRANT/PEER", ErrBadUsername)
		}
		if c.Peer, err = parsePeer(peer); err != nil {
			return Claims{}, err
		}
	default:
		return Claims{}, fmt.Errorf("%w: unknown role %.16q", ErrBadUsername, role)
	}
	if err := checkSubject(c.Subject); err != nil {
		return Claims{}, err
	}
	return c, nil
}

// parseExpiry parses the decimal Unix time before the first colon: digits
// only, no sign, no leading zero, positive.
func parseExpiry(s string) (int64, error) {
	if s == "" || s[0] == '0' || len(s) > 19 {
		return 0, fmt.Errorf("%w: expiry %.24q is not a Unix time", ErrBadUsername, s)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("%w: expiry %.24q is not a Unix time", ErrBadUsername, s)
		}
	}
	exp, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: expiry %.24q is not a Unix time", ErrBadUsername, s)
	}
	return exp, nil
}

// checkSubject accepts IDs like gw_k3j5x7q2m4ab and grt_k3j5x7q2m4ab:
// 1–128 bytes of letters, digits, '_', '-' and '.'. The separators ':' and
// '/' can never appear in one.
func checkSubject(s string) error {
	if s == "" || len(s) > maxSubjectBytes {
		return fmt.Errorf("%w: subject must be 1–%d bytes", ErrBadUsername, maxSubjectBytes)
	}
	for i := 0; i < len(s); i++ {
		switch b := s[i]; {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9', b == '_', b == '-', b == '.':
		default:
			return fmt.Errorf("%w: subject %.40q may hold only letters, digits, '_', '-' and '.'", ErrBadUsername, s)
		}
	}
	return nil
}

// parsePeer parses a client credential's peer: a unicast address and a
// non-zero port, in netip's canonical spelling ("203.0.113.10:50000",
// "[2001:db8::1]:5"), with no zone and no IPv4-mapped IPv6 form.
func parsePeer(s string) (netip.AddrPort, error) {
	p, err := netip.ParseAddrPort(s)
	switch {
	case err != nil:
		return netip.AddrPort{}, fmt.Errorf("%w: peer %.64q is not IP:PORT", ErrBadUsername, s)
	case p.Port() == 0, p.Addr().IsUnspecified(), p.Addr().IsMulticast(), p.Addr().Zone() != "", p.Addr().Is4In6():
		return netip.AddrPort{}, fmt.Errorf("%w: peer %s is not a unicast address and port", ErrBadUsername, p)
	case p.String() != s:
		return netip.AddrPort{}, fmt.Errorf("%w: peer %.64q is not written as %s", ErrBadUsername, s, p)
	}
	return p, nil
}
