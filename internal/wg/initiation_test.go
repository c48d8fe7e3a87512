package wg

import (
	"context"
	"crypto/rand"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/key"
	"golang.org/x/crypto/blake2s"
)

// captureInitiation makes a real wireguard-go device (a client Net) send a
// handshake initiation to gwPub and returns the 148 bytes it put on the
// wire, read from a plain UDP socket standing in for the gateway.
func captureInitiation(tb testing.TB, clientKey key.WGPrivate, gwPub key.WGPublic) []byte {
	tb.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	defer pc.Close()
	c, err := New(Config{PrivateKey: clientKey, Addresses: []netip.Addr{clientAddr}})
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	if err := c.UpsertPeer(Peer{
		PublicKey:  gwPub,
		Endpoint:   pc.LocalAddr().(*net.UDPAddr).AddrPort(),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")},
	}); err != nil {
		tb.Fatal(err)
	}
	// Any packet into the tunnel makes wireguard-go start a handshake.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	go func() {
		if conn, err := c.DialContext(ctx, "tcp", appAddr); err == nil {
			conn.Close()
		}
	}()
	buf := make([]byte, 2048)
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, _, err := pc.ReadFromUDP(buf)
		if err != nil {
			tb.Fatalf("no handshake initiation from wireguard-go: %v", err)
		}
		if IsInitiation(buf[:n]) {
			return append([]byte(nil), buf[:n]...)
		}
	}
}

func TestInitiationDecoderRealHandshake(t *testing.T) {
	gw, client := mustKey(t), mustKey(t)
	pkt := captureInitiation(t, client, gw.Public())
	d := NewInitiationDecoder(gw)
	if err := d.CheckMAC1(pkt); err != nil {
		t.Fatalf("mac1 of a real initiation: %v", err)
	}
	got, err := d.Static(pkt)
	if err != nil {
		t.Fatalf("static of a real initiation: %v", err)
	}
	if !got.Equal(client.Public()) {
		t.Fatalf("static %s, want %s", got, client.Public())
	}

	// The same message read with another key: mac1 fails, so no DH.
	other := NewInitiationDecoder(mustKey(t))
	if err := other.CheckMAC1(pkt); !errors.Is(err, ErrMAC1) {
		t.Fatalf("mac1 with the wrong responder key: %v", err)
	}
	if _, err := other.Static(pkt); !errors.Is(err, ErrMAC1) {
		t.Fatalf("static with the wrong responder key: %v", err)
	}
}

func TestInitiationDecoderBadInput(t *testing.T) {
	gw, client := mustKey(t), mustKey(t)
	d := NewInitiationDecoder(gw)
	good := captureInitiation(t, client, gw.Public())
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	random := make([]byte, InitiationSize)
	rand.Read(random)
	random[0], random[1], random[2], random[3] = 1, 0, 0, 0
	tests := []struct {
		name string
		pkt  []byte
		want error
	}{
		{"empty", nil, ErrNotInitiation},
		{"truncated", good[:InitiationSize-1], ErrNotInitiation},
		{"too long", append(append([]byte(nil), good...), 0), ErrNotInitiation},
		{"response type", mut(func(b []byte) []byte { b[0] = 2; return b }), ErrNotInitiation},
		{"reserved byte set", mut(func(b []byte) []byte { b[2] = 1; return b }), ErrNotInitiation},
		{"random body", random, ErrMAC1},
		{"bad mac1", mut(func(b []byte) []byte { b[initMAC1Off] ^= 1; return b }), ErrMAC1},
		{"static altered", mut(func(b []byte) []byte { b[initStaticOff] ^= 1; return b }), ErrMAC1},
		// mac2 is outside mac1 and outside what Static reads.
		{"mac2 altered", mut(func(b []byte) []byte { b[initMAC2Off] ^= 1; return b }), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := d.Static(tt.pkt)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Static: %v, want %v", err, tt.want)
			}
		})
	}
}

// TestInitiationDecoderStaticTampered re-computes mac1 over a tampered
// static, as an attacker who knows the gateway's public key can: mac1
// passes, and the AEAD refuses the static.
func TestInitiationDecoderStaticTampered(t *testing.T) {
	gw, client := mustKey(t), mustKey(t)
	d := NewInitiationDecoder(gw)
	pkt := captureInitiation(t, client, gw.Public())
	pkt[initStaticOff+3] ^= 0x80
	resignMAC1(t, d, pkt)
	if err := d.CheckMAC1(pkt); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Static(pkt); !errors.Is(err, ErrStatic) {
		t.Fatalf("tampered static: %v, want ErrStatic", err)
	}
}

func resignMAC1(tb testing.TB, d *InitiationDecoder, pkt []byte) {
	tb.Helper()
	h, err := blake2s.New128(d.mac1Key[:])
	if err != nil {
		tb.Fatal(err)
	}
	h.Write(pkt[:initMAC1Off])
	copy(pkt[initMAC1Off:initMAC2Off], h.Sum(nil))
}

func BenchmarkInitiationStatic(b *testing.B) {
	gw, client := mustKey(b), mustKey(b)
	d := NewInitiationDecoder(gw)
	pkt := captureInitiation(b, client, gw.Public())
	b.Run("mac1", func(b *testing.B) {
		for b.Loop() {
			if err := d.CheckMAC1(pkt); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("static", func(b *testing.B) {
		for b.Loop() {
			if _, err := d.Static(pkt); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// FuzzInitiation feeds arbitrary bytes to the decoder: it must never
// panic, and whatever it accepts must have passed mac1.
func FuzzInitiation(f *testing.F) {
	gw, err := key.ParseWGPrivate("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=")
	if err != nil {
		f.Fatal(err)
	}
	d := NewInitiationDecoder(gw)
	f.Add(captureInitiation(f, mustKey(f), gw.Public()))
	f.Add(make([]byte, InitiationSize))
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		pub, err := d.Static(pkt)
		if err != nil {
			return
		}
		if d.CheckMAC1(pkt) != nil || pub.IsZero() {
			t.Fatalf("accepted %x without a valid mac1", pkt)
		}
	})
}
