package wg

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// martianRST answers a TCP SYN whose destination gVisor would drop as
// martian (loopback, unspecified) with a refusal, so a client probing the
// gateway host's loopback services is refused at once instead of hanging:
// over IPv4 an ICMP port unreachable from from4 (the gateway's overlay
// address), over IPv6 a RST.
// It returns nil for every other packet, which then takes the normal path.
// Such SYNs never reach the forwarder (and so could never be accepted).
func martianRST(packet []byte, from4 netip.Addr) []byte {
	if len(packet) == 0 {
		return nil
	}
	switch packet[0] >> 4 {
	case 4:
		return martianRST4(packet, from4)
	case 6:
		return martianRST6(packet)
	}
	return nil
}

func martian(a netip.Addr) bool { return a.IsLoopback() || a.IsUnspecified() }

// synToRefuse returns the TCP header of a SYN (without ACK) and its payload
// length, or false.
func synToRefuse(tcp []byte) (header.TCP, int, bool) {
	if len(tcp) < header.TCPMinimumSize {
		return nil, 0, false
	}
	t := header.TCP(tcp)
	off := int(t.DataOffset())
	if off < header.TCPMinimumSize || off > len(tcp) {
		return nil, 0, false
	}
	if t.Flags()&(header.TCPFlagSyn|header.TCPFlagAck|header.TCPFlagRst) != header.TCPFlagSyn {
		return nil, 0, false
	}
	return t, len(tcp) - off, true
}

func rstFields(t header.TCP, payload int) header.TCPFields {
	return header.TCPFields{
		SrcPort:    t.DestinationPort(),
		DstPort:    t.SourcePort(),
		AckNum:     t.SequenceNumber() + 1 + uint32(payload),
		DataOffset: header.TCPMinimumSize,
		Flags:      header.TCPFlagRst | header.TCPFlagAck,
	}
}

func martianRST4(packet []byte, from netip.Addr) []byte {
	if len(packet) < header.IPv4MinimumSize {
		return nil
	}
	ip := header.IPv4(packet)
	hl := int(ip.HeaderLength())
	total := int(ip.TotalLength())
	if hl < header.IPv4MinimumSize || total < hl || total > len(packet) || ip.TransportProtocol() != header.TCPProtocolNumber || ip.FragmentOffset() != 0 || ip.More() {
		return nil
	}
	src, dst := ip.SourceAddress(), ip.DestinationAddress()
	if !martian(netip.AddrFrom4(dst.As4())) {
		return nil
	}
	t, payload, ok := synToRefuse(packet[hl:total])
	if !ok {
		return nil
	}
	if !from.Is4() {
		return nil
	}
	// The refusal cannot come from the martian address itself: the
	// client's stack would drop a packet from 127.0.0.1 as martian too.
	// ICMP port unreachable from the gateway's own overlay address is
	// what TCP turns into "connection refused".
	quoted := packet[:hl+8]
	out := make([]byte, header.IPv4MinimumSize+header.ICMPv4MinimumSize+len(quoted))
	gw := tcpip.AddrFrom4(from.As4())
	rip := header.IPv4(out)
	rip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(out)), TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber),
		SrcAddr: gw, DstAddr: src,
	})
	rip.SetChecksum(^rip.CalculateChecksum())
	icmp := header.ICMPv4(out[header.IPv4MinimumSize:])
	icmp.SetType(header.ICMPv4DstUnreachable)
	icmp.SetCode(header.ICMPv4PortUnreachable)
	copy(icmp[header.ICMPv4MinimumSize:], quoted)
	icmp.SetChecksum(^checksum.Checksum(icmp, 0))
	_ = t
	_ = payload
	return out
}

func martianRST6(packet []byte) []byte {
	if len(packet) < header.IPv6MinimumSize {
		return nil
	}
	ip := header.IPv6(packet)
	end := header.IPv6MinimumSize + int(ip.PayloadLength())
	if end > len(packet) || ip.TransportProtocol() != header.TCPProtocolNumber {
		return nil
	}
	src, dst := ip.SourceAddress(), ip.DestinationAddress()
	if !martian(netip.AddrFrom16(dst.As16())) {
		return nil
	}
	t, payload, ok := synToRefuse(packet[header.IPv6MinimumSize:end])
	if !ok {
		return nil
	}
	out := make([]byte, header.IPv6MinimumSize+header.TCPMinimumSize)
	rip := header.IPv6(out)
	rip.Encode(&header.IPv6Fields{
		PayloadLength: header.TCPMinimumSize, TransportProtocol: header.TCPProtocolNumber, HopLimit: 64,
		SrcAddr: dst, DstAddr: src,
	})
	rt := header.TCP(out[header.IPv6MinimumSize:])
	f := rstFields(t, payload)
	rt.Encode(&f)
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, dst, src, header.TCPMinimumSize)
	rt.SetChecksum(^rt.CalculateChecksum(xsum))
	return out
}

// queueReply puts a packet we built ourselves on the outbound queue, for
// WireGuard to send back to the peer; a full queue drops it like any other.
func (e *linkEndpoint) queueReply(b []byte) {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	if v4 := b[0]>>4 == 4; v4 {
		pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
	} else {
		pkt.NetworkProtocolNumber = header.IPv6ProtocolNumber
	}
	select {
	case e.queue <- pkt:
	default:
		pkt.DecRef()
		e.drops.Add(1)
	}
}

// flowOf returns the TCP source and destination of an IP packet that
// martianRST has already validated.
func flowOf(packet []byte) (src, dst netip.AddrPort) {
	if packet[0]>>4 == 4 {
		ip := header.IPv4(packet)
		t := header.TCP(packet[ip.HeaderLength():])
		return netip.AddrPortFrom(netip.AddrFrom4(ip.SourceAddress().As4()), t.SourcePort()),
			netip.AddrPortFrom(netip.AddrFrom4(ip.DestinationAddress().As4()), t.DestinationPort())
	}
	ip := header.IPv6(packet)
	t := header.TCP(packet[header.IPv6MinimumSize:])
	return netip.AddrPortFrom(netip.AddrFrom16(ip.SourceAddress().As16()), t.SourcePort()),
		netip.AddrPortFrom(netip.AddrFrom16(ip.DestinationAddress().As16()), t.DestinationPort())
}

// SetRefuseHook sets a function called (on the packet path: it must not
// block) for each connection the stack refuses before any handler sees it:
// SYNs to loopback or unspecified addresses in Forward mode.
func (n *Net) SetRefuseHook(h func(src, dst netip.AddrPort)) {
	n.ep.onRefuse.Store(&h)
}
