package wg

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// ICMP echo in Forward mode: gVisor answers echo only for addresses the NIC
// owns, and a gateway owns none of the addresses clients reach. So the link
// endpoint answers echo requests itself, before the stack sees them, for
// the pairs SetEchoHandler allows: ping to a granted address shows that the
// tunnel and the grant are up (it says nothing about the app behind it).
// Every other echo request is dropped.

// SetEchoHandler sets the function that decides (on the packet path: it
// must not block) whether an ICMPv4 echo request from src to dst is
// answered. Without one, no echo request is answered.
func (n *Net) SetEchoHandler(h func(src, dst netip.Addr) bool) {
	n.ep.onEcho.Store(&h)
}

// echoRequest4 reports whether packet is a well-formed, unfragmented ICMPv4
// echo request, and returns its addresses.
func echoRequest4(packet []byte) (src, dst netip.Addr, ok bool) {
	if len(packet) < header.IPv4MinimumSize || packet[0]>>4 != 4 {
		return src, dst, false
	}
	ip := header.IPv4(packet)
	hl := int(ip.HeaderLength())
	total := int(ip.TotalLength())
	if hl < header.IPv4MinimumSize || total < hl+header.ICMPv4MinimumSize || total > len(packet) ||
		ip.TransportProtocol() != header.ICMPv4ProtocolNumber || ip.FragmentOffset() != 0 || ip.More() {
		return src, dst, false
	}
	icmp := header.ICMPv4(packet[hl:total])
	if icmp.Type() != header.ICMPv4Echo || icmp.Code() != 0 {
		return src, dst, false
	}
	return netip.AddrFrom4(ip.SourceAddress().As4()), netip.AddrFrom4(ip.DestinationAddress().As4()), true
}

// echoReply4 builds the echo reply to a request echoRequest4 accepted: the
// same identifier, sequence and data, from the address that was pinged.
// IP options are not copied.
func echoReply4(packet []byte) []byte {
	ip := header.IPv4(packet)
	hl := int(ip.HeaderLength())
	body := packet[hl:int(ip.TotalLength())]
	out := make([]byte, header.IPv4MinimumSize+len(body))
	reply := header.IPv4(out)
	reply.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(out)), TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber),
		SrcAddr: ip.DestinationAddress(), DstAddr: ip.SourceAddress(),
	})
	reply.SetChecksum(^reply.CalculateChecksum())
	icmp := header.ICMPv4(out[header.IPv4MinimumSize:])
	copy(icmp, body)
	icmp.SetType(header.ICMPv4EchoReply)
	icmp.SetChecksum(0)
	icmp.SetChecksum(^checksum.Checksum(icmp, 0))
	return out
}
