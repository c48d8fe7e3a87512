package wg

import (
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

type recordDispatcher struct{ pkts [][]byte }

func (d *recordDispatcher) DeliverNetworkPacket(p tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	d.pkts = append(d.pkts, pkt.ToView().AsSlice())
}
func (d *recordDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

func TestDebugGRO(t *testing.T) {
	big := makeTCP4(t, 5000, header.TCPFlagAck|header.TCPFlagPsh)
	p, err := parseTCP(big)
	if err != nil {
		t.Fatal(err)
	}
	out := make([][]byte, 10)
	for i := range out {
		out[i] = make([]byte, 2000)
	}
	sizes := make([]int, 10)
	n, err := segmentTCP(big, p, 1000, 0, out, sizes, 0)
	if err != nil {
		t.Fatal(err)
	}
	bufs := make([][]byte, n)
	for i := range n {
		bufs[i] = out[i][:sizes[i]]
	}
	ep := newLinkEndpoint(1500)
	d := &recordDispatcher{}
	ep.Attach(d)
	ep.write(bufs, 0)
	for _, b := range d.pkts {
		h := header.IPv4(b)
		t.Logf("len %d total %d valid %v", len(b), h.TotalLength(), h.IsValid(len(b)))
	}
}

type checkDispatcher struct {
	t     *testing.T
	inner stack.NetworkDispatcher
}

func (d *checkDispatcher) DeliverNetworkPacket(p tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	b := pkt.ToView().AsSlice()
	h := header.IPv4(b)
	if pkt.Size() != len(b) || pkt.Data().Size() != len(b) || len(pkt.NetworkHeader().Slice()) != 0 || int(h.TotalLength()) != len(b) {
		d.t.Logf("odd: view %d size %d data %d nh %d total %d", len(b), pkt.Size(), pkt.Data().Size(), len(pkt.NetworkHeader().Slice()), h.TotalLength())
	}
	if !h.IsValid(len(b)) {
		tcp := header.TCP(b[20:])
		d.t.Logf("invalid: len %d total %d hl %d seq %d flags %v", len(b), h.TotalLength(), h.HeaderLength(), tcp.SequenceNumber(), tcp.Flags())
	}
	d.inner.DeliverNetworkPacket(p, pkt)
}
func (d *checkDispatcher) DeliverLinkPacket(p tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {}
