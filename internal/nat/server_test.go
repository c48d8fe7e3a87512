package nat

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

func TestServer(t *testing.T) {
	for _, network := range []struct{ net, ip string }{{"udp4", "127.0.0.1"}, {"udp6", "::1"}} {
		t.Run(network.net, func(t *testing.T) {
			ip := net.ParseIP(network.ip)
			pc, err := net.ListenUDP(network.net, &net.UDPAddr{IP: ip})
			if err != nil {
				t.Skipf("no %s loopback: %v", network.net, err)
			}
			defer pc.Close()
			ctx, cancel := context.WithCancel(t.Context())
			served := make(chan error, 1)
			go func() { served <- NewServer(pc, nil).Serve(ctx) }()

			client, err := net.DialUDP(network.net, nil, pc.LocalAddr().(*net.UDPAddr))
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			// Junk first: it must be ignored, and the request after it answered.
			for _, junk := range [][]byte{{1, 2, 3}, wgPacket(4, 64, stunMagicCookie), stunPacket(stunBindingSuccess, 0)} {
				if _, err := client.Write(junk); err != nil {
					t.Fatal(err)
				}
			}
			req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
			if _, err := client.Write(req.Raw); err != nil {
				t.Fatal(err)
			}
			client.SetReadDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 1500)
			n, err := client.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			var m stun.Message
			if err := stun.Decode(buf[:n], &m); err != nil {
				t.Fatal(err)
			}
			if m.Type != stun.BindingSuccess || m.TransactionID != req.TransactionID {
				t.Fatalf("response %v, want success for %x", m, req.TransactionID)
			}
			got, err := parseBindingResponse(buf[:n])
			if want := client.LocalAddr().(*net.UDPAddr).AddrPort(); err != nil || got != want {
				t.Fatalf("mapped %v, %v; want %v", got, err, want)
			}
			var sw stun.Software
			if err := sw.GetFrom(&m); err != nil || sw.String() != software {
				t.Errorf("SOFTWARE = %q, %v", sw, err)
			}
			if err := stun.Fingerprint.Check(&m); err != nil {
				t.Errorf("FINGERPRINT: %v", err)
			}

			cancel()
			if err := <-served; err != nil {
				t.Fatalf("Serve: %v", err)
			}
		})
	}
}

func TestServerIgnores(t *testing.T) {
	s := NewServer(nil, nil)
	from := netip.MustParseAddrPort("127.0.0.1:1234")
	for name, b := range map[string][]byte{
		"empty":            nil,
		"wireguard":        wgPacket(1, 148, stunMagicCookie),
		"binding success":  stunPacket(stunBindingSuccess, 0),
		"binding error":    stunPacket(stunBindingError, 4),
		"bad length":       append(stunPacket(stunBindingRequest, 0), 0),
		"allocate request": stunPacket(0x0003, 0),
	} {
		if resp := s.respond(b, from); resp != nil {
			t.Errorf("%s: answered %x", name, resp)
		}
	}
}

func FuzzServer(f *testing.F) {
	f.Add(stun.MustBuild(stun.TransactionID, stun.BindingRequest).Raw, "127.0.0.1:1")
	f.Add(stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.NewSoftware("x"), stun.Fingerprint).Raw, "[::1]:65535")
	f.Add(stunPacket(stunBindingRequest, 8), "[::ffff:127.0.0.1]:3478")
	f.Add(wgPacket(4, 32, stunMagicCookie), "127.0.0.1:1")
	s := NewServer(nil, nil)
	f.Fuzz(func(t *testing.T, b []byte, fromStr string) {
		from, err := netip.ParseAddrPort(fromStr)
		if err != nil {
			from = netip.MustParseAddrPort("127.0.0.1:1")
		}
		resp := s.respond(b, from)
		if resp == nil {
			return
		}
		if Classify(b) != STUN || stunType(b) != stunBindingRequest {
			t.Fatalf("answered a non-request %x", b)
		}
		var m stun.Message
		if err := stun.Decode(resp, &m); err != nil {
			t.Fatalf("undecodable response: %v", err)
		}
		if m.Type != stun.BindingSuccess || string(m.TransactionID[:]) != string(b[stunTxIDOffset:stunHeaderSize]) {
			t.Fatalf("wrong response %v", m)
		}
		got, err := parseBindingResponse(resp)
		want := netip.AddrPortFrom(from.Addr().Unmap().WithZone(""), from.Port())
		if from.Port() == 0 {
			return // a zero port is not a usable mapping; the client rejects it
		}
		if err != nil || got != want {
			t.Fatalf("mapped %v, %v; want %v", got, err, want)
		}
	})
}
