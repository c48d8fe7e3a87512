package wg

import "golang.zx2c4.com/wireguard/tun"

// PacketFilter decides which packets WireGuard decrypted may enter a kernel
// TUN device. It runs on wireguard-go's receive path, once per batch of
// packets from one peer (before the TUN's GRO coalesces them), so it must
// be cheap and must not allocate.
type PacketFilter interface {
	// Filter returns the packets of bufs it lets through, each packet
	// starting at offset in its buffer. It may reorder and reuse bufs'
	// backing array; it must not keep bufs or the packets.
	Filter(bufs [][]byte, offset int) [][]byte
}

// filteredDevice is a tun.Device whose Write passes through a
// PacketFilter first.
type filteredDevice struct {
	tun.Device
	filter PacketFilter
}

// Write writes the packets filter lets through. It reports every packet of
// bufs as written: a refused packet is dropped, as a firewall would.
func (d *filteredDevice) Write(bufs [][]byte, offset int) (int, error) {
	kept := d.filter.Filter(bufs, offset)
	if len(kept) == 0 {
		return len(bufs), nil
	}
	if _, err := d.Device.Write(kept, offset); err != nil {
		return 0, err
	}
	return len(bufs), nil
}
