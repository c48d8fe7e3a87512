package nat

import (
	"net"
	"net/netip"
)

// InterfaceAddrs returns this host's addresses worth advertising as host
// candidates: IPv4, neither loopback nor link-local. It asks the kernel
// each time; callers on a busy path cache the answer.
func InterfaceAddrs() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		if ip := p.Addr().Unmap(); ip.Is4() && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() {
			out = append(out, ip)
		}
	}
	return out
}
