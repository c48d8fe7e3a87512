package relay

import (
	"crypto/hmac"
	"crypto/sha1" //nolint:gosec // the TURN REST API is HMAC-SHA1
	"encoding/base64"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef")

// expiry is a fixed, whole-second credential expiry.
var expiry = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func TestIssueRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name     string
		claims   Claims
		username string
	}{
		{"gateway", Claims{Expires: expiry, Role: RoleGateway, Subject: "gw_k3j5x7q2m4ab"}, "1893553445:gw/gw_k3j5x7q2m4ab"},
		{"client IPv4 peer", Claims{Expires: expiry, Role: RoleClient, Subject: "grt_k3j5x7q2m4ab", Peer: netip.MustParseAddrPort("203.0.113.10:50000")},
			"1893553445:cl/grt_k3j5x7q2m4ab/203.0.113.10:50000"},
		{"client IPv6 peer", Claims{Expires: expiry, Role: RoleClient, Subject: "grt_1", Peer: netip.MustParseAddrPort("[2001:db8::1]:5")},
			"1893553445:cl/grt_1/[2001:db8::1]:5"},
		{"subject with dot and dash", Claims{Expires: expiry, Role: RoleGateway, Subject: "gw-1.site_A"}, "1893553445:gw/gw-1.site_A"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			user, pass, err := Issue(testSecret, tc.claims)
			if err != nil {
				t.Fatal(err)
			}
			if user != tc.username {
				t.Errorf("username %q, want %q", user, tc.username)
			}
			// The password is coturn's: base64(HMAC-SHA1(secret, username)).
			mac := hmac.New(sha1.New, testSecret)
			mac.Write([]byte(user))
			if want := base64.StdEncoding.EncodeToString(mac.Sum(nil)); pass != want {
				t.Errorf("password %q, want %q", pass, want)
			}
			got, err := ParseUsername(user)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.claims {
				t.Errorf("parsed %+v, want %+v", got, tc.claims)
			}
		})
	}
}

func TestIssueTruncatesToSeconds(t *testing.T) {
	user, _, err := Issue(testSecret, Claims{Expires: expiry.Add(999 * time.Millisecond), Role: RoleGateway, Subject: "gw_1"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseUsername(user)
	if err != nil || !c.Expires.Equal(expiry) {
		t.Errorf("expiry %v (%v), want %v", c.Expires, err, expiry)
	}
}

func TestIssueRejects(t *testing.T) {
	peer := netip.MustParseAddrPort("203.0.113.10:50000")
	for _, tc := range []struct {
		name   string
		secret []byte
		claims Claims
	}{
		{"short secret", testSecret[:15], Claims{Expires: expiry, Role: RoleGateway, Subject: "gw_1"}},
		{"no expiry", testSecret, Claims{Role: RoleGateway, Subject: "gw_1"}},
		{"expiry before 1970", testSecret, Claims{Expires: time.Unix(-5, 0), Role: RoleGateway, Subject: "gw_1"}},
		{"no role", testSecret, Claims{Expires: expiry, Subject: "gw_1"}},
		{"unknown role", testSecret, Claims{Expires: expiry, Role: "admin", Subject: "x"}},
		{"empty subject", testSecret, Claims{Expires: expiry, Role: RoleGateway}},
		{"subject with slash", testSecret, Claims{Expires: expiry, Role: RoleGateway, Subject: "gw/1"}},
		{"subject with colon", testSecret, Claims{Expires: expiry, Role: RoleClient, Subject: "g:1", Peer: peer}},
		{"subject too long", testSecret, Claims{Expires: expiry, Role: RoleGateway, Subject: strings.Repeat("a", 129)}},
		{"gateway with peer", testSecret, Claims{Expires: expiry, Role: RoleGateway, Subject: "gw_1", Peer: peer}},
		{"client without peer", testSecret, Claims{Expires: expiry, Role: RoleClient, Subject: "grt_1"}},
		{"client with port 0", testSecret, Claims{Expires: expiry, Role: RoleClient, Subject: "grt_1", Peer: netip.MustParseAddrPort("203.0.113.10:0")}},
		{"client with unspecified peer", testSecret, Claims{Expires: expiry, Role: RoleClient, Subject: "grt_1", Peer: netip.MustParseAddrPort("0.0.0.0:5")}},
		{"client with zoned peer", testSecret, Claims{Expires: expiry, Role: RoleClient, Subject: "grt_1", Peer: netip.MustParseAddrPort("[fe80::1%eth0]:5")}},
		{"client with 4in6 peer", testSecret, Claims{Expires: expiry, Role: RoleClient, Subject: "grt_1", Peer: netip.MustParseAddrPort("[::ffff:203.0.113.10]:5")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if u, p, err := Issue(tc.secret, tc.claims); err == nil {
				t.Errorf("Issue = %q, %q; want an error", u, p)
			}
		})
	}
}

func TestParseUsernameRejects(t *testing.T) {
	for _, tc := range []struct{ name, username string }{
		{"empty", ""},
		{"no colon", "1893553445"},
		{"plain TURN REST user", "1893553445:alice"},
		{"no expiry", ":gw/gw_1"},
		{"signed expiry", "+1893553445:gw/gw_1"},
		{"negative expiry", "-1893553445:gw/gw_1"},
		{"zero expiry", "0:gw/gw_1"},
		{"leading zero", "01893553445:gw/gw_1"},
		{"expiry overflows", "99999999999999999999:gw/gw_1"},
		{"hex expiry", "0x70d9a5e5:gw/gw_1"},
		{"unknown role", "1893553445:xx/foo"},
		{"role in upper case", "1893553445:GW/gw_1"},
		{"role without subject", "1893553445:gw"},
		{"gateway empty subject", "1893553445:gw/"},
		{"gateway with peer", "1893553445:gw/gw_1/203.0.113.10:5"},
		{"client without peer", "1893553445:cl/grt_1"},
		{"client empty peer", "1893553445:cl/grt_1/"},
		{"client empty grant", "1893553445:cl//203.0.113.10:5"},
		{"client peer without port", "1893553445:cl/grt_1/203.0.113.10"},
		{"client peer port 0", "1893553445:cl/grt_1/203.0.113.10:0"},
		{"client peer host name", "1893553445:cl/grt_1/gw.example:5"},
		{"client peer IPv6 without brackets", "1893553445:cl/grt_1/2001:db8::1:5"},
		{"client peer not canonical", "1893553445:cl/grt_1/[2001:DB8::1]:5"},
		{"client peer leading zero port", "1893553445:cl/grt_1/203.0.113.10:05"},
		{"client peer multicast", "1893553445:cl/grt_1/224.0.0.1:5"},
		{"client peer 4in6", "1893553445:cl/grt_1/[::ffff:203.0.113.10]:5"},
		{"client peer with zone", "1893553445:cl/grt_1/[fe80::1%eth0]:5"},
		{"client trailing junk", "1893553445:cl/grt_1/203.0.113.10:5/x"},
		{"subject with space", "1893553445:gw/gw 1"},
		{"subject not ASCII", "1893553445:gw/gw_é"},
		{"too long", "1893553445:gw/" + strings.Repeat("a", 600)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseUsername(tc.username)
			if err == nil {
				t.Fatalf("ParseUsername(%q) = %+v, want an error", tc.username, c)
			}
			if !errors.Is(err, ErrBadUsername) {
				t.Errorf("error %v does not wrap ErrBadUsername", err)
			}
		})
	}
}

// FuzzParseUsername checks that no input crashes the parser and that every
// accepted username is exactly what Issue produces for its claims.
func FuzzParseUsername(f *testing.F) {
	for _, s := range []string{
		"1893553445:gw/gw_k3j5x7q2m4ab",
		"1893553445:cl/grt_1/203.0.113.10:50000",
		"1893553445:cl/grt_1/[2001:db8::1]:5",
		"1893553445:xx/foo",
		"1893553445",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, username string) {
		c, err := ParseUsername(username)
		if err != nil {
			return
		}
		again, _, err := Issue(testSecret, c)
		if err != nil {
			t.Fatalf("ParseUsername(%q) = %+v, which Issue refuses: %v", username, c, err)
		}
		if again != username {
			t.Fatalf("ParseUsername(%q) = %+v, which Issue spells %q", username, c, again)
		}
	})
}
