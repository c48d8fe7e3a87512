package nat

import (
	"net/netip"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"
)

// Verdict is what an [InitiationHook] decides about a handshake
// initiation.
type Verdict uint8

const (
	// Pass hands the initiation to wireguard-go now.
	Pass Verdict = iota
	// Drop discards it; wireguard-go never sees it.
	Drop
	// Hold takes it out of wireguard-go's way for now: the hook keeps the
	// *Initiation and calls [Initiation.Deliver] once wireguard-go can
	// use it (typically after adding the initiator's peer), or forgets it.
	Hold
)

// InitiationHook sees every WireGuard handshake initiation (type 1, 148
// bytes) the Bind receives, from its socket or through its relay
// allocation, before wireguard-go does. It runs on a receive path, so it
// must be quick and must never wait for the wireguard-go device (no UAPI
// calls): hold the packet and do slow work elsewhere.
type InitiationHook func(in *Initiation) Verdict

// Initiation is a handshake initiation shown to an [InitiationHook]. The
// Bind owns a copy of the packet, so the hook may keep it.
type Initiation struct {
	// Packet is the 148-byte message. Do not modify it.
	Packet []byte
	// From is the address it came from: the peer's address as the relay
	// saw it when Relayed.
	From    netip.AddrPort
	Relayed bool

	ep        conn.Endpoint
	b         *Bind
	done      <-chan struct{} // the open period it was received in
	delivered atomic.Bool
}

// SetInitiationHook installs h (nil removes it). With no hook, initiations
// go to wireguard-go untouched, at no cost.
func (b *Bind) SetInitiationHook(h InitiationHook) {
	if h == nil {
		b.initHook.Store(nil)
		return
	}
	b.initHook.Store(&h)
}

// isInitiation reports whether pkt has the shape of a handshake initiation.
func isInitiation(pkt []byte) bool {
	return len(pkt) == wgInitiationSize && pkt[0] == wgInitiation && pkt[1] == 0 && pkt[2] == 0 && pkt[3] == 0
}

// judgeInitiation asks the hook about pkt. It reports whether the packet
// stays in the batch (Pass, or no hook).
func (b *Bind) judgeInitiation(pkt []byte, ep conn.Endpoint, relayed bool) bool {
	hp := b.initHook.Load()
	if hp == nil || !isInitiation(pkt) {
		return true
	}
	b.mu.Lock()
	done := b.done
	b.mu.Unlock()
	if done == nil {
		return false // closed under us: nobody would read a held packet
	}
	// One small allocation per initiation: they are rare (a client
	// handshakes every two minutes), unlike data packets, which never get
	// here.
	in := &Initiation{
		Packet:  append([]byte(nil), pkt...),
		Relayed: relayed,
		ep:      ep,
		b:       b,
		done:    done,
	}
	if re, ok := ep.(*RelayEndpoint); ok {
		in.From = re.Peer
	} else {
		in.From = endpointAddr(ep)
	}
	return (*hp)(in) == Pass
}

// Deliver hands a held initiation to wireguard-go, with the endpoint it
// arrived on (so the handshake response leaves the way the initiation
// came in). It reports false, dropping the packet, if it was already
// delivered or the Bind was closed since the packet arrived. It may block
// while wireguard-go's receive path is backed up.
func (in *Initiation) Deliver() bool {
	if in.done == nil || !in.delivered.CompareAndSwap(false, true) {
		return false
	}
	select {
	case <-in.done:
		return false
	default:
	}
	b := in.b
	buf := b.pool.Get().(*[maxPacket]byte)
	n := copy(buf[:], in.Packet)
	select {
	case b.relayRx <- relayPacket{buf: buf, n: n, ep: in.ep}:
		return true
	case <-in.done:
		b.pool.Put(buf)
		return false
	}
}
