package nat

import (
	"golang.zx2c4.com/wireguard/conn"
)

// The inner Bind (wireguard-go's StdNetBind) coalesces a run of equal-sized
// packets to one peer into one UDP GSO send of up to 65,507 bytes: the most
// a UDP datagram may carry. The kernel refuses to offload a GSO packet whose
// frame, link-layer header included, is over 64 KiB, and segments it in
// software on the sending CPU instead, so the packets then cross every hop
// one by one. With WireGuard packets of 1,448 bytes (a kernel TCP stream) 45
// fit either way; with the 1,424-byte packets a gVisor stream makes (it keeps
// room for TCP options) 46 fit the UDP limit but not the frame, which halved
// the gateway's throughput. sendGSO cuts a batch where, and only where, the
// inner Bind would otherwise coalesce past the frame limit: every cut costs a
// sendmmsg of its own, and a kernel TCP stream's batches (a 64 KiB TSO burst
// read from a TUN is 47 packets, which coalesce 45 + 2) need none.

// Most UDP payload one GSO send may carry so that its frame (Ethernet 14 +
// IP + UDP 8 + payload) stays within the kernel's 64 KiB GSO limit.
const (
	maxGSOPayload4 = 1<<16 - 14 - 20 - 8
	maxGSOPayload6 = 1<<16 - 14 - 40 - 8
)

// How StdNetBind coalesces (conn/bind_std.go): one message takes packets no
// larger than its first, the first smaller one ending it, up to
// maxUDPSegments datagrams and the UDP payload limit.
const (
	maxUDPPayload4 = 1<<16 - 1 - 20 - 8
	maxUDPPayload6 = 1<<16 - 1 - 8
	maxUDPSegments = 64
)

// gsoCut returns how many packets from the start of bufs (at least one,
// when bufs is not empty) the inner Bind may be handed in one Send: it
// follows the inner Bind's coalescing and stops before the first packet
// that would grow a message past the frame limit while the UDP limit
// still let it in. Where the inner Bind would not coalesce for a reason
// this does not model (the buffer's capacity), a cut is merely one Send
// more.
func gsoCut(bufs [][]byte, is6 bool) int {
	frameLimit, udpLimit := maxGSOPayload4, maxUDPPayload4
	if is6 {
		frameLimit, udpLimit = maxGSOPayload6, maxUDPPayload6
	}
	var (
		size  int  // payload of the message being coalesced
		seg   int  // its segment size: its first packet's length
		count int  // its datagrams
		ended bool // a packet shorter than seg ended it
	)
	for i, b := range bufs {
		n := len(b)
		if i > 0 && !ended && n <= seg && count < maxUDPSegments && size+n <= udpLimit {
			if size+n > frameLimit {
				return i
			}
			size += n
			count++
			ended = n < seg
			continue
		}
		size, seg, count, ended = n, n, 1, false
	}
	return len(bufs)
}

// sendGSO sends bufs to ep through inner in as few Sends as keep every
// coalesced send within the frame limit.
func sendGSO(inner conn.Bind, bufs [][]byte, ep conn.Endpoint) error {
	is6 := ep.DstIP().Is6()
	for len(bufs) > 0 {
		k := gsoCut(bufs, is6)
		if err := inner.Send(bufs[:k], ep); err != nil {
			return err
		}
		bufs = bufs[k:]
	}
	return nil
}
