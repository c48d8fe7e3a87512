package wg

import (
	"golang.zx2c4.com/wireguard/conn"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// recordDispatcher keeps a copy of every packet the endpoint delivers.
type recordDispatcher struct{ pkts [][]byte }

func (d *recordDispatcher) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	d.pkts = append(d.pkts, pkt.ToView().AsSlice())
}

func (d *recordDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// TestWriteCoalesces checks that MTU-sized segments of one flow written in
// one batch reach the stack as one packet with consistent headers.
func TestWriteCoalesces(t *testing.T) {
	const mss = 1000
	big := makeTCP4(t, 5*mss, header.TCPFlagAck|header.TCPFlagPsh)
	p, _ := parseTCP(big)
	bufs, sizes := makeBufs(8, 2000)
	n, err := segmentTCP(big, p, mss, 0, bufs, sizes, 0)
	if err != nil {
		t.Fatal(err)
	}
	batch := make([][]byte, n)
	for i := range batch {
		batch[i] = bufs[i][:sizes[i]]
	}

	ep := newLinkEndpoint(1500)
	d := &recordDispatcher{}
	ep.Attach(d)
	if _, err := ep.write(batch, 0); err != nil {
		t.Fatal(err)
	}
	if len(d.pkts) != 1 {
		t.Fatalf("delivered %d packets, want 1 coalesced", len(d.pkts))
	}
	got := header.IPv4(d.pkts[0])
	if int(got.TotalLength()) != len(big) || len(d.pkts[0]) != len(big) {
		t.Fatalf("coalesced packet: total length %d, %d bytes; want %d", got.TotalLength(), len(d.pkts[0]), len(big))
	}
	if string(d.pkts[0][p.hdrLen():]) != string(big[p.hdrLen():]) {
		t.Fatal("coalesced payload differs")
	}
}

// TestReadSegmentsAcrossCalls checks that a GSO packet bigger than a read
// batch comes out whole over several Reads.
func TestReadSegmentsAcrossCalls(t *testing.T) {
	const mss = 1000
	ep := newLinkEndpoint(1500)
	big := makeTCP4(t, 10*mss, header.TCPFlagAck)
	p, _ := parseTCP(big)
	ep.pending, ep.pendingHdr, ep.pendingMSS = big, p, mss
	var segs [][]byte
	for ep.pending != nil {
		bufs, sizes := makeBufs(3, 1600)
		n, err := ep.read(bufs, sizes, 0)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			segs = append(segs, bufs[i][:sizes[i]])
		}
	}
	if len(segs) != 10 {
		t.Fatalf("%d segments, want 10", len(segs))
	}
	checkSegments(t, big, segs, mss)
}

// FuzzInbound writes arbitrary packets, as a peer could send them inside
// the tunnel, through GRO into a real stack in Forward mode. Nothing may
// panic.
func FuzzInbound(f *testing.F) {
	f.Add(makeTCP4(f, 100, header.TCPFlagAck|header.TCPFlagPsh), makeTCP4(f, 100, header.TCPFlagAck))
	f.Add(makeTCP4(f, 0, header.TCPFlagSyn), makeTCP6(f, 0, header.TCPFlagSyn))
	f.Add(makeTCP6(f, 1000, header.TCPFlagAck), []byte{0x45})
	f.Add([]byte{0x60, 0, 0, 0, 0, 8, 17, 64}, []byte{})

	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
	})
	defer s.Destroy()
	ep := newLinkEndpoint(1420)
	if err := s.CreateNIC(nicID, ep); err != nil {
		f.Fatal(err)
	}
	s.SetPromiscuousMode(nicID, true)
	s.SetSpoofing(nicID, true)
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: nicID}, {Destination: header.IPv6EmptySubnet, NIC: nicID}})
	fwd := tcp.NewForwarder(s, 0, 10, func(r *tcp.ForwarderRequest) { r.Complete(true) })
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
	// Drain what the stack answers so the queue never fills.
	bufs, sizes := makeBufs(conn.IdealBatchSize, 1<<16)

	f.Fuzz(func(t *testing.T, a, b []byte) {
		ep.write([][]byte{a, b, a}, 0)
		for len(ep.queue) > 0 || ep.pending != nil {
			ep.read(bufs, sizes, 0)
		}
	})
}
