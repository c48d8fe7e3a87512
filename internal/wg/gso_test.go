package wg

import (
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// makeTCP4 builds an IPv4/TCP packet with a payload of n bytes (0, 1, 2, …)
// and a partial checksum, as gVisor's TCP hands a GSO packet to the link.
func makeTCP4(tb testing.TB, n int, flags header.TCPFlags) []byte {
	tb.Helper()
	const tcpLen = header.TCPMinimumSize + 12 // timestamps option
	pkt := make([]byte, header.IPv4MinimumSize+tcpLen+n)
	ip := header.IPv4(pkt)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(pkt)),
		ID:          0x1234,
		Flags:       header.IPv4FlagDontFragment,
		TTL:         64,
		Protocol:    uint8(header.TCPProtocolNumber),
		SrcAddr:     tcpip.AddrFrom4([4]byte{100, 64, 0, 2}),
		DstAddr:     tcpip.AddrFrom4([4]byte{192, 0, 2, 10}),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	tcp := header.TCP(pkt[header.IPv4MinimumSize:])
	tcp.Encode(&header.TCPFields{
		SrcPort:    40000,
		DstPort:    80,
		SeqNum:     0xfffff000, // wraps inside the packet
		AckNum:     77,
		DataOffset: tcpLen,
		Flags:      flags,
		WindowSize: 1000,
	})
	header.EncodeTSOption(1, 2, tcp[header.TCPMinimumSize:])
	for i := range n {
		pkt[header.IPv4MinimumSize+tcpLen+i] = byte(i)
	}
	tcp.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(tcpLen+n)))
	return pkt
}
