package nat

import "encoding/binary"

// Kind is what a datagram on the shared socket is.
type Kind uint8

const (
	// Unknown is neither well-formed WireGuard nor well-formed STUN.
	Unknown Kind = iota
	// WireGuard is a structurally valid WireGuard message.
	WireGuard
	// STUN is a structurally valid STUN message (RFC 8489 header).
	STUN
)

// String returns the kind's name.
func (k Kind) String() string {
	switch k {
	case WireGuard:
		return "wireguard"
	case STUN:
		return "stun"
	default:
		return "unknown"
	}
}

// WireGuard message types and sizes (wireguard-go device/noise-protocol.go).
const (
	wgInitiation     = 1
	wgResponse       = 2
	wgCookieReply    = 3
	wgTransport      = 4
	wgInitiationSize = 148
	wgResponseSize   = 92
	wgCookieSize     = 64
	wgTransportMin   = 32 // header 16 + Poly1305 tag 16: a keepalive
)

// STUN header constants (RFC 8489 §5).
const (
	stunHeaderSize  = 20
	stunMagicCookie = 0x2112A442
	stunTxIDOffset  = 8
	stunTxIDSize    = 12
)

// Classify reports what b is. It is strict on purpose: a WireGuard message has
// type 1–4 followed by three zero bytes and its exact size (at least 32 bytes
// for data); a STUN message has its two top bits clear, the magic cookie at
// bytes 4–7, and a length field that accounts for exactly the rest of b in
// whole 4-byte words.
//
// Because WireGuard's three zero bytes make the STUN length field zero, the
// two kinds are disjoint under these rules; a loose "cookie at bytes 4–7"
// test is not, since a WireGuard data packet's receiver index sits there.
// Classify alone is still not a reason to consume a packet: [Bind] takes only
// STUN responses to transactions it is waiting for.
func Classify(b []byte) Kind {
	switch {
	case isWireGuard(b):
		return WireGuard
	case isSTUN(b):
		return STUN
	default:
		return Unknown
	}
}

func isWireGuard(b []byte) bool {
	if len(b) < 4 || b[1] != 0 || b[2] != 0 || b[3] != 0 {
		return false
	}
	switch b[0] {
	case wgInitiation:
		return len(b) == wgInitiationSize
	case wgResponse:
		return len(b) == wgResponseSize
	case wgCookieReply:
		return len(b) == wgCookieSize
	case wgTransport:
		return len(b) >= wgTransportMin
	default:
		return false
	}
}

func isSTUN(b []byte) bool {
	if len(b) < stunHeaderSize || b[0]&0xc0 != 0 {
		return false
	}
	if binary.BigEndian.Uint32(b[4:8]) != stunMagicCookie {
		return false
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	return n%4 == 0 && n+stunHeaderSize == len(b)
}

// stunType returns the STUN message type of a b that [isSTUN] accepted.
func stunType(b []byte) uint16 { return binary.BigEndian.Uint16(b[0:2]) }

// STUN message types we use: Binding request, success and error response.
const (
	stunBindingRequest = 0x0001
	stunBindingSuccess = 0x0101
	stunBindingError   = 0x0111
)
