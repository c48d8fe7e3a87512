package wg

import (
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
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

// makeTCP6 is makeTCP4 for IPv6.
func makeTCP6(tb testing.TB, n int, flags header.TCPFlags) []byte {
	tb.Helper()
	v4 := makeTCP4(tb, n, flags)
	tcpSeg := v4[header.IPv4MinimumSize:]
	pkt := make([]byte, header.IPv6MinimumSize+len(tcpSeg))
	ip := header.IPv6(pkt)
	ip.Encode(&header.IPv6Fields{
		PayloadLength:     uint16(len(tcpSeg)),
		TransportProtocol: header.TCPProtocolNumber,
		HopLimit:          64,
		SrcAddr:           tcpip.AddrFrom16([16]byte{0: 0xfd, 15: 2}),
		DstAddr:           tcpip.AddrFrom16([16]byte{0: 0xfd, 15: 1}),
	})
	copy(pkt[header.IPv6MinimumSize:], tcpSeg)
	tcp := header.TCP(pkt[header.IPv6MinimumSize:])
	tcp.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcpSeg))))
	return pkt
}

func makeBufs(n, size int) ([][]byte, []int) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, size)
	}
	return bufs, make([]int, n)
}

// checkSegments verifies segments of orig (built by makeTCP4/6) with gVisor's
// header package: lengths, checksums, sequence numbers, flags, IPv4 IDs,
// and that the payloads put back together equal the original.
func checkSegments(t *testing.T, orig []byte, segs [][]byte, mss int) {
	t.Helper()
	p, err := parseTCP(orig)
	if err != nil {
		t.Fatal(err)
	}
	origTCP := header.TCP(orig[p.ipHdrLen:])
	var payload []byte
	for i, seg := range segs {
		var src, dst tcpip.Address
		if p.v6 {
			ip := header.IPv6(seg)
			if !ip.IsValid(len(seg)) || int(ip.PayloadLength()) != len(seg)-header.IPv6MinimumSize {
				t.Fatalf("segment %d: bad IPv6 header", i)
			}
			src, dst = ip.SourceAddress(), ip.DestinationAddress()
		} else {
			ip := header.IPv4(seg)
			if !ip.IsValid(len(seg)) || int(ip.TotalLength()) != len(seg) || !ip.IsChecksumValid() {
				t.Fatalf("segment %d: bad IPv4 header (total %d, len %d)", i, ip.TotalLength(), len(seg))
			}
			if want := header.IPv4(orig).ID() + uint16(i); ip.ID() != want {
				t.Errorf("segment %d: IP ID %d, want %d", i, ip.ID(), want)
			}
			src, dst = ip.SourceAddress(), ip.DestinationAddress()
		}
		tcp := header.TCP(seg[p.ipHdrLen:])
		data := tcp[tcp.DataOffset():]
		if len(data) > mss {
			t.Errorf("segment %d: %d payload bytes > mss %d", i, len(data), mss)
		}
		xsum := checksum.Checksum(data, 0)
		if !tcp.IsChecksumValid(src, dst, xsum, uint16(len(data))) {
			t.Errorf("segment %d: bad TCP checksum", i)
		}
		if want := origTCP.SequenceNumber() + uint32(len(payload)); tcp.SequenceNumber() != want {
			t.Errorf("segment %d: seq %d, want %d", i, tcp.SequenceNumber(), want)
		}
		wantFlags := origTCP.Flags()
		if i != len(segs)-1 {
			wantFlags &^= header.TCPFlagFin | header.TCPFlagPsh
		}
		if i != 0 {
			wantFlags &^= header.TCPFlagCwr
		}
		if tcp.Flags() != wantFlags {
			t.Errorf("segment %d: flags %v, want %v", i, tcp.Flags(), wantFlags)
		}
		if string(tcp[header.TCPMinimumSize:tcp.DataOffset()]) != string(origTCP[header.TCPMinimumSize:origTCP.DataOffset()]) {
			t.Errorf("segment %d: TCP options changed", i)
		}
		payload = append(payload, data...)
	}
	if string(payload) != string(orig[p.hdrLen():]) {
		t.Errorf("reassembled payload differs (%d vs %d bytes)", len(payload), len(orig)-p.hdrLen())
	}
}

func TestSegmentTCP(t *testing.T) {
	const mss = 1000
	all := header.TCPFlagAck | header.TCPFlagPsh | header.TCPFlagFin | header.TCPFlagCwr
	for _, tc := range []struct {
		name    string
		payload int
		flags   header.TCPFlags
		want    int // segments
	}{
		{"pure ack", 0, header.TCPFlagAck, 1},
		{"one byte", 1, header.TCPFlagAck | header.TCPFlagPsh, 1},
		{"exactly mss", mss, all, 1},
		{"mss plus one", mss + 1, all, 2},
		{"odd length", 3*mss + 7, all, 4},
		{"many", 64000, header.TCPFlagAck | header.TCPFlagPsh, 64},
	} {
		for _, v6 := range []bool{false, true} {
			name := tc.name + "/v4"
			if v6 {
				name = tc.name + "/v6"
			}
			t.Run(name, func(t *testing.T) {
				var pkt []byte
				if v6 {
					pkt = makeTCP6(t, tc.payload, tc.flags)
				} else {
					pkt = makeTCP4(t, tc.payload, tc.flags)
				}
				orig := append([]byte(nil), pkt...)
				p, err := parseTCP(pkt)
				if err != nil {
					t.Fatal(err)
				}
				if got := p.segments(pkt, mss); got != tc.want {
					t.Fatalf("segments = %d, want %d", got, tc.want)
				}
				const offset = 16 // as wireguard-go leaves room for its header
				bufs, sizes := makeBufs(tc.want+1, offset+mss+100)
				n, err := segmentTCP(pkt, p, mss, 0, bufs, sizes, offset)
				if err != nil || n != tc.want {
					t.Fatalf("segmentTCP = %d, %v; want %d", n, err, tc.want)
				}
				if string(pkt) != string(orig) {
					t.Fatal("segmentTCP modified its input")
				}
				segs := make([][]byte, n)
				for i := range segs {
					segs[i] = bufs[i][offset : offset+sizes[i]]
				}
				checkSegments(t, orig, segs, mss)
			})
		}
	}
}

// TestSegmentTCPResume cuts a packet into more segments than one call has
// buffers for, as tunDevice.Read must when a batch fills up.
func TestSegmentTCPResume(t *testing.T) {
	const mss = 500
	pkt := makeTCP4(t, 10*mss+1, header.TCPFlagAck|header.TCPFlagPsh)
	p, _ := parseTCP(pkt)
	var segs [][]byte
	for next := 0; next < p.segments(pkt, mss); {
		bufs, sizes := makeBufs(3, 2000)
		n, err := segmentTCP(pkt, p, mss, next, bufs, sizes, 0)
		if err != nil || n == 0 {
			t.Fatalf("segmentTCP from %d = %d, %v", next, n, err)
		}
		for i := range n {
			segs = append(segs, bufs[i][:sizes[i]])
		}
		next += n
	}
	if len(segs) != 11 {
		t.Fatalf("%d segments, want 11", len(segs))
	}
	checkSegments(t, pkt, segs, mss)
}

func TestSegmentTCPShortBuffer(t *testing.T) {
	pkt := makeTCP4(t, 3000, header.TCPFlagAck)
	p, _ := parseTCP(pkt)
	bufs, sizes := makeBufs(4, 500)
	if _, err := segmentTCP(pkt, p, 1000, 0, bufs, sizes, 0); err == nil {
		t.Fatal("segmentTCP into short buffers succeeded")
	}
}

func TestParseTCPRejects(t *testing.T) {
	good := makeTCP4(t, 10, header.TCPFlagAck)
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	for _, tc := range []struct {
		name string
		pkt  []byte
	}{
		{"empty", nil},
		{"version 5", mutate(func(b []byte) []byte { b[0] = 0x55; return b })},
		{"short IHL", mutate(func(b []byte) []byte { b[0] = 0x44; return b })},
		{"total length too long", mutate(func(b []byte) []byte { b[3]++; return b })},
		{"truncated", good[:30]},
		{"fragment", mutate(func(b []byte) []byte { b[6] |= 0x20; return b })},
		{"UDP", mutate(func(b []byte) []byte { b[9] = 17; return b })},
		{"TCP data offset too big", mutate(func(b []byte) []byte { b[header.IPv4MinimumSize+12] = 0xf0; return b })},
		{"TCP data offset too small", mutate(func(b []byte) []byte { b[header.IPv4MinimumSize+12] = 0x40; return b })},
		{"IPv6 with extension header", func() []byte { b := makeTCP6(t, 10, header.TCPFlagAck); b[6] = 0; return b }()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parseTCP(tc.pkt); err == nil {
				t.Fatal("parseTCP accepted it")
			}
		})
	}
}

// FuzzSegmentTCP feeds arbitrary bytes to the parser and segmenter: they
// must not panic, and whatever they accept must come out with valid
// checksums.
func FuzzSegmentTCP(f *testing.F) {
	f.Add(makeTCP4(f, 3000, header.TCPFlagAck|header.TCPFlagPsh), uint16(1000))
	f.Add(makeTCP6(f, 1, header.TCPFlagAck), uint16(1))
	f.Add(makeTCP4(f, 0, header.TCPFlagSyn), uint16(0))
	bufs, sizes := makeBufs(8, 1<<16)
	f.Fuzz(func(t *testing.T, pkt []byte, mss uint16) {
		p, err := parseTCP(pkt)
		if err != nil {
			return
		}
		n, err := segmentTCP(pkt, p, int(mss), 0, bufs, sizes, 0)
		if err != nil {
			return
		}
		for i := range n {
			seg := bufs[i][:sizes[i]]
			q, err := parseTCP(seg)
			if err != nil {
				t.Fatalf("segment %d does not parse: %v", i, err)
			}
			var src, dst tcpip.Address
			if q.v6 {
				src, dst = header.IPv6(seg).SourceAddress(), header.IPv6(seg).DestinationAddress()
			} else {
				if !header.IPv4(seg).IsChecksumValid() {
					t.Fatalf("segment %d: bad IPv4 checksum", i)
				}
				src, dst = header.IPv4(seg).SourceAddress(), header.IPv4(seg).DestinationAddress()
			}
			tcp := header.TCP(seg[q.ipHdrLen:])
			data := seg[q.hdrLen():]
			if !tcp.IsChecksumValid(src, dst, checksum.Checksum(data, 0), uint16(len(data))) {
				t.Fatalf("segment %d: bad TCP checksum", i)
			}
		}
	})
}
