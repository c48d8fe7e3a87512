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
// the gateway's throughput. sendGSO hands the inner Bind runs short enough
// that every coalesced send fits a frame.

// Most UDP payload one GSO send may carry so that its frame (Ethernet 14 +
// IP + UDP 8 + payload) stays within the kernel's 64 KiB GSO limit.
const (
	maxGSOPayload4 = 1<<16 - 14 - 20 - 8
	maxGSOPayload6 = 1<<16 - 14 - 40 - 8
)

// gsoRun is how many packets of size n may go in one coalesced send.
func gsoRun(n int, is6 bool) int {
	limit := maxGSOPayload4
	if is6 {
		limit = maxGSOPayload6
	}
	if n <= 0 || n > limit {
		return 1
	}
	return limit / n
}

// sendGSO sends bufs to ep through inner in runs that never coalesce past
// the frame limit. A run starts at each packet; the inner Bind coalesces
// only packets no larger than the run's first, so sizing the run by its
// first packet is enough.
func sendGSO(inner conn.Bind, bufs [][]byte, ep conn.Endpoint) error {
	is6 := ep.DstIP().Is6()
	for len(bufs) > 0 {
		k := min(gsoRun(len(bufs[0]), is6), len(bufs))
		if err := inner.Send(bufs[:k], ep); err != nil {
			return err
		}
		bufs = bufs[k:]
	}
	return nil
}
