package wg

import (
	"bytes"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

func echoRequestPacket(src, dst netip.Addr, data []byte) []byte {
	b := make([]byte, header.IPv4MinimumSize+header.ICMPv4MinimumSize+len(data))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber),
		SrcAddr: tcpip.AddrFrom4(src.As4()), DstAddr: tcpip.AddrFrom4(dst.As4())})
	ip.SetChecksum(^ip.CalculateChecksum())
	icmp := header.ICMPv4(b[header.IPv4MinimumSize:])
	icmp.SetType(header.ICMPv4Echo)
	icmp.SetIdent(0x4b48)
	icmp.SetSequence(7)
	copy(icmp.Payload(), data)
	icmp.SetChecksum(^checksum.Checksum(icmp, 0))
	return b
}

func TestEchoReply4(t *testing.T) {
	src, dst := netip.MustParseAddr("100.64.0.2"), netip.MustParseAddr("100.96.0.9")
	req := echoRequestPacket(src, dst, []byte("keyhole ping"))
	s, d, ok := echoRequest4(req)
	if !ok || s != src || d != dst {
		t.Fatalf("echoRequest4 = %v %v %v", s, d, ok)
	}
	rep := echoReply4(req)
	ip := header.IPv4(rep)
	if !ip.IsChecksumValid() || ip.SourceAddress() != tcpip.AddrFrom4(dst.As4()) || ip.DestinationAddress() != tcpip.AddrFrom4(src.As4()) {
		t.Fatalf("reply IP header wrong: %x", rep[:20])
	}
	icmp := header.ICMPv4(rep[header.IPv4MinimumSize:])
	if icmp.Type() != header.ICMPv4EchoReply || icmp.Ident() != 0x4b48 || icmp.Sequence() != 7 || !bytes.Equal(icmp.Payload(), []byte("keyhole ping")) {
		t.Fatalf("reply ICMP wrong: %x", icmp)
	}
	if checksum.Checksum(icmp, 0) != 0xffff {
		t.Fatal("reply ICMP checksum invalid")
	}
	// Not echo requests: truncated, other types, fragments, other protocols.
	bad := [][]byte{nil, req[:20], req[:27]}
	other := bytes.Clone(req)
	header.ICMPv4(other[20:]).SetType(header.ICMPv4EchoReply)
	frag := bytes.Clone(req)
	header.IPv4(frag).SetFlagsFragmentOffset(header.IPv4FlagMoreFragments, 0)
	udp := bytes.Clone(req)
	udp[9] = uint8(header.UDPProtocolNumber)
	long := bytes.Clone(req)
	header.IPv4(long).SetTotalLength(uint16(len(req) + 1))
	for i, p := range append(bad, other, frag, udp, long) {
		if _, _, ok := echoRequest4(p); ok {
			t.Errorf("case %d: accepted as an echo request", i)
		}
	}
}

func FuzzEchoRequest4(f *testing.F) {
	f.Add(echoRequestPacket(netip.MustParseAddr("100.64.0.2"), netip.MustParseAddr("100.96.0.9"), []byte("x")))
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, _, ok := echoRequest4(b); ok {
			_ = echoReply4(b)
		}
	})
}
