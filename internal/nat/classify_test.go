package nat

import (
	"encoding/binary"
	"testing"

	"github.com/pion/stun/v3"
)

// wgPacket returns a WireGuard-shaped message of the given type and size
// whose bytes 4–7 (sender or receiver index) are index.
func wgPacket(typ byte, size int, index uint32) []byte {
	b := make([]byte, size)
	b[0] = typ
	binary.BigEndian.PutUint32(b[4:8], index)
	return b
}

// stunPacket returns a STUN message of the given type with n bytes of
// (zero) attribute payload.
func stunPacket(typ uint16, n int) []byte {
	b := make([]byte, stunHeaderSize+n)
	binary.BigEndian.PutUint16(b[0:2], typ)
	binary.BigEndian.PutUint16(b[2:4], uint16(n))
	binary.BigEndian.PutUint32(b[4:8], stunMagicCookie)
	copy(b[8:20], "transaction!")
	return b
}

func TestClassify(t *testing.T) {
	mod := func(b []byte, f func([]byte)) []byte { f(b); return b }
	realReq, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.NewSoftware("x"), stun.Fingerprint)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		b    []byte
		want Kind
	}{
		{"nil", nil, Unknown},
		{"short", []byte{4, 0, 0}, Unknown},
		{"wg initiation", wgPacket(1, 148, 7), WireGuard},
		{"wg initiation wrong size", wgPacket(1, 149, 7), Unknown},
		{"wg response", wgPacket(2, 92, 7), WireGuard},
		{"wg response wrong size", wgPacket(2, 91, 7), Unknown},
		{"wg cookie reply", wgPacket(3, 64, 7), WireGuard},
		{"wg cookie reply wrong size", wgPacket(3, 68, 7), Unknown},
		{"wg keepalive", wgPacket(4, 32, 7), WireGuard},
		{"wg data", wgPacket(4, 1420, 7), WireGuard},
		{"wg data too short", wgPacket(4, 31, 7), Unknown},
		{"wg type 0", wgPacket(0, 148, 7), Unknown},
		{"wg type 5", wgPacket(5, 148, 7), Unknown},
		{"wg reserved byte set", mod(wgPacket(4, 64, 7), func(b []byte) { b[2] = 1 }), Unknown},
		// The collision: a receiver index equal to the magic cookie.
		{"wg data with cookie index", wgPacket(4, 64, stunMagicCookie), WireGuard},
		{"wg keepalive with cookie index", wgPacket(4, 32, stunMagicCookie), WireGuard},
		{"wg initiation with cookie index", wgPacket(1, 148, stunMagicCookie), WireGuard},
		{"stun binding request", stunPacket(stunBindingRequest, 0), STUN},
		{"stun binding success", stunPacket(stunBindingSuccess, 12), STUN},
		{"stun pion request", realReq.Raw, STUN},
		{"stun length not multiple of 4", mod(stunPacket(stunBindingSuccess, 12), func(b []byte) { b[3] = 10 }), Unknown},
		{"stun length too long", mod(stunPacket(stunBindingSuccess, 12), func(b []byte) { b[3] = 16 }), Unknown},
		{"stun trailing bytes", append(stunPacket(stunBindingSuccess, 8), 0, 0, 0, 0), Unknown},
		{"stun truncated header", stunPacket(stunBindingSuccess, 0)[:19], Unknown},
		{"stun top bits set", stunPacket(0x4001, 0), Unknown},
		{"stun wrong cookie", mod(stunPacket(stunBindingSuccess, 0), func(b []byte) { b[7] ^= 1 }), Unknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Classify(tt.b); got != tt.want {
				t.Errorf("Classify = %v, want %v", got, tt.want)
			}
		})
	}
}

func FuzzClassify(f *testing.F) {
	f.Add(wgPacket(1, 148, 1))
	f.Add(wgPacket(2, 92, 1))
	f.Add(wgPacket(3, 64, 1))
	f.Add(wgPacket(4, 32, stunMagicCookie))
	f.Add(stunPacket(stunBindingSuccess, 12))
	f.Add(stunPacket(stunBindingRequest, 0))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		k := Classify(b)
		if isWireGuard(b) && isSTUN(b) {
			t.Fatalf("both WireGuard and STUN: %x", b)
		}
		switch k {
		case STUN:
			if !stun.IsMessage(b) {
				t.Fatalf("STUN but pion disagrees: %x", b)
			}
			var m stun.Message
			// pion may reject attribute contents; it must not panic
			// and must agree on the header.
			if err := stun.Decode(b, &m); err == nil && int(m.Length)+stunHeaderSize != len(b) {
				t.Fatalf("length mismatch with pion: %x", b)
			}
		case WireGuard:
			if b[0] < 1 || b[0] > 4 || b[1]|b[2]|b[3] != 0 {
				t.Fatalf("bad WireGuard header: %x", b)
			}
		}
	})
}
