package lab

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"
)

// restCredentials returns TURN REST API credentials for user that expire at
// expiry, as Keyhole's controller hands them out and coturn's
// --use-auth-secret checks them.
func restCredentials(secret, user string, expiry time.Time) (username, password string) {
	username = strconv.FormatInt(expiry.Unix(), 10) + ":" + user
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(username))
	return username, base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// turnAllocation is a TURN client with its UDP allocation.
type turnAllocation struct {
	client  *turn.Client
	relayed net.PacketConn
}

// allocate makes a UDP allocation on server from a socket in host's
// namespace, so it goes through host's NAT. Everything it opens is closed
// at cleanup.
func allocate(t *testing.T, l *Lab, host string, server netip.AddrPort, username, password string) (*turnAllocation, error) {
	t.Helper()
	conn := udpSocket(t, l, host, netip.Addr{})
	c, err := turn.NewClient(&turn.ClientConfig{
		TURNServerAddr: server.String(),
		Username:       username,
		Password:       password,
		Realm:          CoturnRealm,
		Conn:           conn,
	})
	if err != nil {
		t.Fatalf("turn client in %s: %v", host, err)
	}
	t.Cleanup(c.Close)
	if err := c.Listen(); err != nil {
		t.Fatalf("turn client in %s: %v", host, err)
	}
	relayed, err := c.Allocate()
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { relayed.Close() })
	return &turnAllocation{client: c, relayed: relayed}, nil
}

// addrPort returns a's address as a netip.AddrPort.
func addrPort(a net.Addr) netip.AddrPort {
	u, _ := a.(*net.UDPAddr)
	if u == nil {
		return netip.AddrPort{}
	}
	return u.AddrPort()
}

// relayAsk sends msg from one allocation to dst, resending every 100ms,
// until want arrives on the other allocation from src; it returns false if
// nothing did within wait.
func relayAsk(from, to net.PacketConn, dst, src netip.AddrPort, msg string, wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	buf := make([]byte, 1500)
	for time.Now().Before(deadline) {
		if _, err := from.WriteTo([]byte(msg), net.UDPAddrFromAddrPort(dst)); err != nil {
			return false
		}
		to.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		for {
			n, got, err := to.ReadFrom(buf)
			if err != nil {
				break // resend
			}
			if addrPort(got) == src && string(buf[:n]) == msg {
				return true
			}
		}
	}
	return false
}

// turnErrorCode returns the STUN error code in err, or 0.
func turnErrorCode(err error) stun.ErrorCode {
	var te *stun.TurnError
	if errors.As(err, &te) {
		return te.ErrorCodeAttr.Code
	}
	return 0
}

// TestCoturn proves that coturn from Debian works as a Keyhole relay: REST
// API credentials, and relay-to-relay traffic between a client allocation
// (through the home NAT) and a gateway allocation (through the site NAT) on
// the same relay address. It also proves that the lab's coturn refuses bad
// credentials and is no open relay.
func TestCoturn(t *testing.T) {
	l := newLab(t, Config{})
	const secret = "lab-turn-secret"
	server := l.StartCoturn(t, Internet2, secret)
	valid := time.Now().Add(time.Hour)

	t.Run("RelayToRelay", func(t *testing.T) {
		gwUser, gwPass := restCredentials(secret, "gateway", valid)
		gw, err := allocate(t, l, Gateway, server, gwUser, gwPass)
		if err != nil {
			t.Fatalf("gateway allocation: %v", err)
		}
		clUser, clPass := restCredentials(secret, "client", valid)
		cl, err := allocate(t, l, Client, server, clUser, clPass)
		if err != nil {
			t.Fatalf("client allocation: %v", err)
		}
		gwRelayed, clRelayed := addrPort(gw.relayed.LocalAddr()), addrPort(cl.relayed.LocalAddr())
		for name, a := range map[string]netip.AddrPort{"gateway": gwRelayed, "client": clRelayed} {
			if a.Addr() != server.Addr() || a.Port() < CoturnMinPort || a.Port() > CoturnMaxPort {
				t.Errorf("%s relayed address %v, want %v port %d-%d", name, a, server.Addr(), CoturnMinPort, CoturnMaxPort)
			}
		}
		// The gateway lets the client's relay in, as Keyhole's gateway does
		// for a granted client; the client's WriteTo makes its own.
		if err := gw.client.CreatePermission(net.UDPAddrFromAddrPort(clRelayed)); err != nil {
			t.Fatalf("gateway permission for %v: %v", clRelayed, err)
		}
		if !relayAsk(cl.relayed, gw.relayed, gwRelayed, clRelayed, "hello gateway", patience) {
			t.Fatalf("client relay %v → gateway relay %v: nothing arrived", clRelayed, gwRelayed)
		}
		if !relayAsk(gw.relayed, cl.relayed, clRelayed, gwRelayed, "hello client", patience) {
			t.Fatalf("gateway relay %v → client relay %v: nothing arrived", gwRelayed, clRelayed)
		}
	})

	t.Run("BadCredentials", func(t *testing.T) {
		for _, tc := range []struct {
			name, secret string
			expiry       time.Time
		}{
			{"WrongSecret", "not-" + secret, valid},
			{"Expired", secret, time.Now().Add(-time.Minute)},
		} {
			t.Run(tc.name, func(t *testing.T) {
				user, pass := restCredentials(tc.secret, "client", tc.expiry)
				a, err := allocate(t, l, Client, server, user, pass)
				if err == nil {
					t.Fatalf("allocation with bad credentials got %v", a.relayed.LocalAddr())
				}
				if code := turnErrorCode(err); code != stun.CodeUnauthorized {
					t.Errorf("allocation error %v, want code %d", err, stun.CodeUnauthorized)
				}
			})
		}
	})

	t.Run("NoOpenRelay", func(t *testing.T) {
		user, pass := restCredentials(secret, "client", valid)
		cl, err := allocate(t, l, Client, server, user, pass)
		if err != nil {
			t.Fatalf("client allocation: %v", err)
		}
		for _, peer := range []netip.Addr{
			l.Addr(Gateway), // a site LAN address
			l.Addr(Client),  // a home LAN address
			netip.MustParseAddr("127.0.0.1"),
			netip.MustParseAddr("100.64.0.1"),
		} {
			err := cl.client.CreatePermission(net.UDPAddrFromAddrPort(netip.AddrPortFrom(peer, 9)))
			if code := turnErrorCode(err); code != stun.CodeForbidden {
				t.Errorf("permission for %v: %v, want code %d", peer, err, stun.CodeForbidden)
			}
		}
		// Control: a peer on the lab's internet is allowed.
		if err := cl.client.CreatePermission(net.UDPAddrFromAddrPort(netip.AddrPortFrom(l.Addr(Internet), 9))); err != nil {
			t.Errorf("permission for %v: %v", l.Addr(Internet), err)
		}
	})
}
