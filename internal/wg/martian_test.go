package wg

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

func synPacket(t testing.TB, src, dst string, flags header.TCPFlags, payload int) []byte {
	v6 := len(parseIP(src)) == 16
	hl := header.IPv4MinimumSize
	if v6 {
		hl = header.IPv6MinimumSize
	}
	b := make([]byte, hl+header.TCPMinimumSize+payload)
	s, d := tcpip.AddrFromSlice(parseIP(src)), tcpip.AddrFromSlice(parseIP(dst))
	if v6 {
		header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: uint16(header.TCPMinimumSize + payload), TransportProtocol: header.TCPProtocolNumber, HopLimit: 64, SrcAddr: s, DstAddr: d})
	} else {
		header.IPv4(b).Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: s, DstAddr: d})
	}
	header.TCP(b[hl:]).Encode(&header.TCPFields{SrcPort: 40000, DstPort: 22, SeqNum: 1000, DataOffset: header.TCPMinimumSize, Flags: flags})
	return b
}

func parseIP(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func TestMartianRST(t *testing.T) {
	tests := []struct {
		name     string
		pkt      []byte
		wantRST  bool
		wantAck  uint32
		checksum bool
	}{
		{name: "v4 SYN to loopback", pkt: synPacket(t, "100.64.0.1", "127.0.0.1", header.TCPFlagSyn, 0), wantRST: true, wantAck: 1001},
		{name: "v4 SYN with data to 127.1.2.3", pkt: synPacket(t, "100.64.0.1", "127.1.2.3", header.TCPFlagSyn, 5), wantRST: true, wantAck: 1006},
		{name: "v4 SYN to unspecified", pkt: synPacket(t, "100.64.0.1", "0.0.0.0", header.TCPFlagSyn, 0), wantRST: true, wantAck: 1001},
		{name: "v6 SYN to ::1", pkt: synPacket(t, "fd00::1", "::1", header.TCPFlagSyn, 0), wantRST: true, wantAck: 1001},
		{name: "v4 SYN to an app", pkt: synPacket(t, "100.64.0.1", "100.96.0.1", header.TCPFlagSyn, 0)},
		{name: "v4 ACK to loopback", pkt: synPacket(t, "100.64.0.1", "127.0.0.1", header.TCPFlagAck, 0)},
		{name: "v4 SYN-ACK to loopback", pkt: synPacket(t, "100.64.0.1", "127.0.0.1", header.TCPFlagSyn|header.TCPFlagAck, 0)},
		{name: "truncated", pkt: synPacket(t, "100.64.0.1", "127.0.0.1", header.TCPFlagSyn, 0)[:30]},
		{name: "empty", pkt: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rst := martianRST(tt.pkt, netip.MustParseAddr("100.112.0.1"))
			if (rst != nil) != tt.wantRST {
				t.Fatalf("rst = %x, want %v", rst, tt.wantRST)
			}
			if rst == nil {
				return
			}
			var tcp header.TCP
			var src, dst tcpip.Address
			if rst[0]>>4 == 4 {
				ip := header.IPv4(rst)
				if !ip.IsValid(len(rst)) || ip.CalculateChecksum() != 0xffff || ip.SourceAddress() != tcpip.AddrFrom4([4]byte{100, 112, 0, 1}) {
					t.Fatal("bad IPv4 header")
				}
				icmp := header.ICMPv4(ip.Payload())
				if icmp.Type() != header.ICMPv4DstUnreachable || icmp.Code() != header.ICMPv4PortUnreachable {
					t.Fatalf("icmp %v/%v", icmp.Type(), icmp.Code())
				}
				if quoted := header.IPv4(icmp.Payload()); quoted.DestinationAddress() != header.IPv4(tt.pkt).DestinationAddress() {
					t.Fatal("ICMP does not quote the original packet")
				}
				return
			} else {
				ip := header.IPv6(rst)
				tcp, src, dst = header.TCP(rst[header.IPv6MinimumSize:]), ip.SourceAddress(), ip.DestinationAddress()
			}
			if tcp.Flags() != header.TCPFlagRst|header.TCPFlagAck || tcp.AckNumber() != tt.wantAck || tcp.SourcePort() != 22 || tcp.DestinationPort() != 40000 {
				t.Fatalf("rst header: flags %v ack %d ports %d→%d", tcp.Flags(), tcp.AckNumber(), tcp.SourcePort(), tcp.DestinationPort())
			}
			xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcp)))
			if !tcp.IsChecksumValid(src, dst, xsum, 0) && tcp.CalculateChecksum(xsum) != 0xffff {
				t.Fatal("bad TCP checksum")
			}
		})
	}
}

func FuzzMartianRST(f *testing.F) {
	f.Add(synPacket(f, "100.64.0.1", "127.0.0.1", header.TCPFlagSyn, 0))
	f.Add(synPacket(f, "fd00::1", "::1", header.TCPFlagSyn, 3))
	f.Fuzz(func(t *testing.T, b []byte) {
		if rst := martianRST(b, netip.MustParseAddr("100.112.0.1")); rst != nil && martianRST(rst, netip.MustParseAddr("100.112.0.1")) != nil {
			t.Fatal("a RST we build would itself be answered")
		}
	})
}
