package gateway

import (
	"encoding/binary"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
)

// pkt describes a test packet.
type pkt struct {
	v6         bool
	src, dst   string
	proto      uint8
	sport      uint16
	dport      uint16
	tcpFlags   byte
	icmpType   byte
	fragOffset uint16 // in 8-byte units
	moreFrags  bool
	l4Len      int // transport bytes to keep (0: the full header)
	ihl        int // header length in bytes (0: 20)
	totalDelta int // added to the total length field
}

// build returns the packet's bytes.
func (p pkt) build() []byte {
	if p.v6 {
		b := make([]byte, 40+20)
		b[0] = 0x60
		binary.BigEndian.PutUint16(b[4:6], 20)
		b[6] = ipProtoTCP
		return b
	}
	ihl := p.ihl
	if ihl == 0 {
		ihl = 20
	}
	var l4 []byte
	switch p.proto {
	case ipProtoTCP:
		l4 = make([]byte, 20)
		binary.BigEndian.PutUint16(l4[0:2], p.sport)
		binary.BigEndian.PutUint16(l4[2:4], p.dport)
		l4[12] = 5 << 4
		l4[13] = p.tcpFlags
	case ipProtoUDP:
		l4 = make([]byte, 8+4)
		binary.BigEndian.PutUint16(l4[0:2], p.sport)
		binary.BigEndian.PutUint16(l4[2:4], p.dport)
		binary.BigEndian.PutUint16(l4[4:6], 12)
	case ipProtoICMP:
		l4 = make([]byte, 8)
		l4[0] = p.icmpType
	default:
		l4 = make([]byte, 8)
	}
	if p.l4Len > 0 {
		l4 = l4[:p.l4Len]
	}
	hdrLen := max(ihl, 20)
	b := make([]byte, hdrLen+len(l4))
	b[0] = 0x40 | byte(ihl/4)
	binary.BigEndian.PutUint16(b[2:4], uint16(len(b)+p.totalDelta))
	frag := p.fragOffset & ipv4FragOffsetMask
	if p.moreFrags {
		frag |= 0x2000
	}
	binary.BigEndian.PutUint16(b[6:8], frag)
	b[8] = 64
	b[9] = p.proto
	s, d := netip.MustParseAddr(p.src).As4(), netip.MustParseAddr(p.dst).As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	copy(b[hdrLen:], l4)
	return b
}

const (
	testClient   = "100.64.0.1"
	expiredPeer  = "100.64.0.2"
	unknownPeer  = "100.64.0.9"
	testVIP      = "100.96.0.1"
	testSiteHost = "198.51.100.20"
	otherDest    = "203.0.113.5"
)

// testFilter returns a filter at a fixed time holding a live grant for
// testClient (the wiki's virtual address and a CIDR app, tcp/80, tcp/7,
// udp/5300) and an expired one for expiredPeer.
func testFilter(t testing.TB) (*packetFilter, *prometheus.CounterVec) {
	t.Helper()
	now := time.Date(2026, 11, 23, 18, 0, 0, 0, time.UTC)
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "refused_total"}, []string{"proto", "reason"})
	f := newPacketFilter(func() time.Time { return now }, slog.New(slog.DiscardHandler), refused, 16)
	ports := []api.PortRange{{Proto: "tcp", First: 80, Last: 80}, {Proto: "tcp", First: 7, Last: 7}, {Proto: "udp", First: 5300, Last: 5300}}
	targets := []api.GrantTarget{
		{Prefix: netip.MustParsePrefix(testVIP + "/32"), Host: "wiki.corp.internal"},
		{Prefix: netip.MustParsePrefix("198.51.100.0/24")},
	}
	f.setClient(netip.MustParseAddr(testClient), []api.GatewayGrant{{ID: "g1", Targets: targets, Ports: ports, NotAfter: now.Add(10 * time.Minute)}})
	f.setClient(netip.MustParseAddr(expiredPeer), []api.GatewayGrant{{ID: "g2", Targets: targets, Ports: ports, NotAfter: now.Add(-time.Second)}})
	return f, refused
}

func TestPacketFilter(t *testing.T) {
	tcp := func(src, dst string, port uint16) pkt {
		return pkt{src: src, dst: dst, proto: ipProtoTCP, sport: 40000, dport: port, tcpFlags: 0x10}
	}
	tests := []struct {
		name string
		p    pkt
		raw  []byte // instead of p
		want verdict
	}{
		{"allowed tcp to virtual address", tcp(testClient, testVIP, 80), nil, pass},
		{"allowed second port", tcp(testClient, testVIP, 7), nil, pass},
		{"allowed tcp to CIDR app", tcp(testClient, testSiteHost, 80), nil, pass},
		{"allowed udp", pkt{src: testClient, dst: testVIP, proto: ipProtoUDP, sport: 5000, dport: 5300}, nil, pass},
		{"wrong port", tcp(testClient, testVIP, 22), nil, refusePort},
		{"udp port of a tcp grant", pkt{src: testClient, dst: testVIP, proto: ipProtoUDP, sport: 5000, dport: 80}, nil, refusePort},
		{"wrong destination", tcp(testClient, otherDest, 80), nil, refuseDestination},
		{"the gateway's overlay address", tcp(testClient, "100.112.0.1", 80), nil, refuseDestination},
		{"unknown client", tcp(unknownPeer, testVIP, 80), nil, refuseNoGrant},
		{"expired grant", tcp(expiredPeer, testVIP, 80), nil, refuseExpired},
		{"expired grant, wrong port", tcp(expiredPeer, testVIP, 22), nil, refuseExpired},
		{"ping a granted address", pkt{src: testClient, dst: testVIP, proto: ipProtoICMP, icmpType: icmpEchoRequest}, nil, pass},
		{"unreachable to a granted address", pkt{src: testClient, dst: testVIP, proto: ipProtoICMP, icmpType: icmpUnreachable}, nil, pass},
		{"ping elsewhere", pkt{src: testClient, dst: otherDest, proto: ipProtoICMP, icmpType: icmpEchoRequest}, nil, refuseDestination},
		{"ICMP timestamp", pkt{src: testClient, dst: testVIP, proto: ipProtoICMP, icmpType: 13}, nil, refuseProtocol},
		{"ping, expired", pkt{src: expiredPeer, dst: testVIP, proto: ipProtoICMP, icmpType: icmpEchoRequest}, nil, refuseExpired},
		{"GRE", pkt{src: testClient, dst: testVIP, proto: 47}, nil, refuseProtocol},
		{"IPv6", pkt{v6: true}, nil, refuseProtocol},
		{"empty", pkt{}, []byte{}, refuseMalformed},
		{"one byte", pkt{}, []byte{0x45}, refuseMalformed},
		{"short IPv4 header", pkt{}, make([]byte, 19), refuseMalformed},
		{"version 5", pkt{}, append([]byte{0x55}, make([]byte, 40)...), refuseMalformed},
		{"header length below 20", pkt{src: testClient, dst: testVIP, proto: ipProtoTCP, dport: 80, ihl: 16}, nil, refuseMalformed},
		{"IP options", pkt{src: testClient, dst: testVIP, proto: ipProtoTCP, dport: 80, ihl: 24}, nil, refuseProtocol},
		{"total length below header length", pkt{src: testClient, dst: testVIP, proto: ipProtoUDP, dport: 5300, ihl: 60, l4Len: 8, totalDelta: -100}, nil, refuseMalformed},
		{"header length beyond packet", pkt{}, append([]byte{0x4f, 0, 0, 20}, make([]byte, 16)...), refuseMalformed},
		{"total length beyond packet", pkt{src: testClient, dst: testVIP, proto: ipProtoTCP, dport: 80, totalDelta: 1}, nil, refuseMalformed},
		{"truncated tcp header", pkt{src: testClient, dst: testVIP, proto: ipProtoTCP, dport: 80, l4Len: 12}, nil, refuseMalformed},
		{"truncated udp header", pkt{src: testClient, dst: testVIP, proto: ipProtoUDP, dport: 5300, l4Len: 4}, nil, refuseMalformed},
		{"truncated icmp header", pkt{src: testClient, dst: testVIP, proto: ipProtoICMP, icmpType: 8, l4Len: 4}, nil, refuseMalformed},
		{"first fragment, granted", pkt{src: testClient, dst: testVIP, proto: ipProtoUDP, dport: 5300, moreFrags: true}, nil, pass},
		{"first fragment, wrong port", pkt{src: testClient, dst: testVIP, proto: ipProtoUDP, dport: 53, moreFrags: true}, nil, refusePort},
		{"tiny first fragment", pkt{src: testClient, dst: testVIP, proto: ipProtoTCP, dport: 80, moreFrags: true, l4Len: 8}, nil, refuseMalformed},
		{"later fragment to a granted address", pkt{src: testClient, dst: testVIP, proto: ipProtoUDP, fragOffset: 185, l4Len: 8}, nil, pass},
		{"later fragment elsewhere", pkt{src: testClient, dst: otherDest, proto: ipProtoUDP, fragOffset: 185, l4Len: 8}, nil, refuseDestination},
		{"later fragment, unknown client", pkt{src: unknownPeer, dst: testVIP, proto: ipProtoTCP, fragOffset: 1, l4Len: 8}, nil, refuseNoGrant},
		{"later fragment of GRE", pkt{src: testClient, dst: testVIP, proto: 47, fragOffset: 1}, nil, refuseProtocol},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, refused := testFilter(t)
			b := tc.raw
			if b == nil {
				b = tc.p.build()
			}
			const offset = 16 // wireguard-go's headroom
			buf := append(make([]byte, offset), b...)
			kept := f.Filter([][]byte{buf}, offset)
			got := pass
			if len(kept) == 0 {
				got = numVerdicts // the counter says which refusal
				for v := pass + 1; v < numVerdicts; v++ {
					for _, proto := range []string{"tcp", "udp", "icmp", "other"} {
						if counterValue(t, refused.WithLabelValues(proto, v.label())) > 0 {
							got = v
						}
					}
				}
			}
			if got != tc.want {
				t.Fatalf("verdict %s, want %s", got.label(), tc.want.label())
			}
			if got == pass && len(kept) != 1 {
				t.Fatalf("kept %d packets", len(kept))
			}
		})
	}
}

// counterValue reads a counter.
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestPacketFilterBatch(t *testing.T) {
	f, _ := testFilter(t)
	good := pkt{src: testClient, dst: testVIP, proto: ipProtoTCP, dport: 80, tcpFlags: 0x10}.build()
	bad := pkt{src: testClient, dst: testVIP, proto: ipProtoTCP, dport: 22, tcpFlags: 0x10}.build()
	stranger := pkt{src: unknownPeer, dst: testVIP, proto: ipProtoTCP, dport: 80, tcpFlags: 0x10}.build()
	bufs := [][]byte{bad, good, stranger, good, {}, good, bad}
	kept := f.Filter(bufs, 0)
	if len(kept) != 3 {
		t.Fatalf("kept %d of the batch, want 3", len(kept))
	}
	for _, b := range kept {
		if &b[0] != &good[0] {
			t.Fatal("kept a packet that is not the granted one")
		}
	}
	if n := f.refusedSeen.Load(); n != 4 {
		t.Fatalf("%d refusals counted, want 4", n)
	}
	// An offset past a buffer's end is refused, not a panic.
	if kept := f.Filter([][]byte{good}, len(good)+1); len(kept) != 0 {
		t.Fatal("a buffer shorter than the offset was kept")
	}
}

func TestPacketFilterFollowsTable(t *testing.T) {
	now := time.Date(2026, 11, 23, 18, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	tbl := NewGrantTable(clock)
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "refused_total"}, []string{"proto", "reason"})
	f := newPacketFilter(clock, slog.New(slog.DiscardHandler), refused, 0)
	ck, err := key.NewWGPrivate()
	if err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddr(testClient)
	gr := api.GatewayGrant{ID: "g1", ClientIP: client, ClientWGKey: ck.Public(), NotAfter: now.Add(time.Minute),
		Targets: []api.GrantTarget{{Prefix: netip.MustParsePrefix(testVIP + "/32")}},
		Ports:   []api.PortRange{{Proto: "tcp", First: 80, Last: 80}}}
	tbl.Upsert(gr) // before the observer: replayed
	var removedSeen int
	tbl.Observe(func(ip netip.Addr, gs []api.GatewayGrant, removed bool) {
		f.setClient(ip, gs)
		if removed {
			removedSeen++
		}
	})
	p := pkt{src: testClient, dst: testVIP, proto: ipProtoTCP, dport: 80}.build()
	passes := func() bool { return len(f.Filter([][]byte{p}, 0)) == 1 }
	if !passes() {
		t.Fatal("a replayed grant does not pass")
	}
	if !f.allows(client, netip.MustParseAddr(testVIP), ipProtoTCP, 80) || f.allows(client, netip.MustParseAddr(testVIP), ipProtoTCP, 81) {
		t.Fatal("allows disagrees with the grant")
	}
	tbl.Remove("g1")
	if passes() || removedSeen != 1 {
		t.Fatalf("after revocation: passes %v, removals seen %d", passes(), removedSeen)
	}
	gr.ID = "g2"
	tbl.Upsert(gr)
	if !passes() {
		t.Fatal("a new grant does not pass")
	}
	now = now.Add(2 * time.Minute) // past NotAfter, before the expiry loop ran
	if passes() {
		t.Fatal("an expired grant passes before the table expired it")
	}
	gr.NotAfter = now.Add(time.Minute) // renewal
	tbl.Upsert(gr)
	if !passes() {
		t.Fatal("a renewed grant does not pass")
	}
	tbl.Replace(nil)
	if passes() {
		t.Fatal("passes after the table was emptied")
	}
}

func TestPacketFilterFlows(t *testing.T) {
	f, _ := testFilter(t)
	syn := pkt{src: testClient, dst: testVIP, proto: ipProtoTCP, sport: 40000, dport: 80, tcpFlags: 0x02}.build()
	synAck := pkt{src: testClient, dst: testVIP, proto: ipProtoTCP, sport: 40000, dport: 80, tcpFlags: 0x12}.build()
	ack := pkt{src: testClient, dst: testVIP, proto: ipProtoTCP, sport: 40000, dport: 80, tcpFlags: 0x10}.build()
	udp1 := pkt{src: testClient, dst: testVIP, proto: ipProtoUDP, sport: 5000, dport: 5300}.build()
	udp2 := pkt{src: testClient, dst: testVIP, proto: ipProtoUDP, sport: 5001, dport: 5300}.build()
	deniedSyn := pkt{src: testClient, dst: testVIP, proto: ipProtoTCP, sport: 40000, dport: 22, tcpFlags: 0x02}.build()
	f.Filter([][]byte{syn, synAck, ack, ack, udp1, udp1, udp2, udp1, deniedSyn, syn}, 0)
	var got []flowStart
	for len(f.flows) > 0 {
		got = append(got, <-f.flows)
	}
	if len(got) != 3 {
		t.Fatalf("%d new flows, want 3 (one SYN, sent twice; two UDP 5-tuples): %+v", len(got), got)
	}
	if got[0].proto != ipProtoTCP || got[0].dport != 80 || got[1].sport != 5000 || got[2].sport != 5001 {
		t.Fatalf("flows %+v", got)
	}
}

func TestPacketFilterNoAllocs(t *testing.T) {
	f, _ := testFilter(t)
	batch := benchBatch(64, true)
	bufs := make([][]byte, len(batch))
	allocs := testing.AllocsPerRun(100, func() {
		copy(bufs, batch)
		f.Filter(bufs, 0)
	})
	if allocs != 0 {
		t.Fatalf("Filter allocates %v times per batch", allocs)
	}
}

// benchBatch returns n granted TCP packets of one connection; mixed puts
// a SYN and a refused packet among them.
func benchBatch(n int, mixed bool) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		p := pkt{src: testClient, dst: testVIP, proto: ipProtoTCP, sport: 40000, dport: 80, tcpFlags: 0x10}
		switch {
		case mixed && i == 0:
			p.tcpFlags = 0x02
		case mixed && i == 1:
			p.dport = 22
		}
		out[i] = append(p.build(), make([]byte, 1380)...)
		binary.BigEndian.PutUint16(out[i][2:4], uint16(len(out[i])))
	}
	return out
}

// BenchmarkPacketFilter is the per-packet cost of the TUN mode's grant
// check on an established connection, a batch of 64 packets at a time as
// wireguard-go hands them over;
// BenchmarkAuthorizePerPacket is what GrantTable.Authorize would cost
// instead.
func BenchmarkPacketFilter(b *testing.B) {
	f, _ := testFilter(b)
	batch := benchBatch(64, false)
	bufs := make([][]byte, len(batch))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		copy(bufs, batch)
		f.Filter(bufs, 0)
		for len(f.flows) > 0 {
			<-f.flows
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/packet")
}

func BenchmarkAuthorizePerPacket(b *testing.B) {
	now := time.Now()
	tbl := NewGrantTable(time.Now)
	ck, err := key.NewWGPrivate()
	if err != nil {
		b.Fatal(err)
	}
	tbl.Upsert(api.GatewayGrant{ID: "g1", ClientIP: netip.MustParseAddr(testClient), ClientWGKey: ck.Public(), NotAfter: now.Add(time.Hour),
		Targets: []api.GrantTarget{{Prefix: netip.MustParsePrefix(testVIP + "/32"), Host: "wiki.corp.internal"}},
		Ports:   []api.PortRange{{Proto: "tcp", First: 80, Last: 80}}})
	src, dst := netip.MustParseAddr(testClient), netip.MustParseAddrPort(testVIP+":80")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tbl.Authorize(src, dst, "tcp"); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzPacketFilter feeds the filter arbitrary packets: it must never
// panic, and what it keeps must parse as IPv4 from a granted client.
func FuzzPacketFilter(f *testing.F) {
	for _, p := range []pkt{
		{src: testClient, dst: testVIP, proto: ipProtoTCP, dport: 80, tcpFlags: 0x02},
		{src: testClient, dst: testVIP, proto: ipProtoUDP, dport: 5300, moreFrags: true},
		{src: testClient, dst: testVIP, proto: ipProtoUDP, fragOffset: 3, l4Len: 2},
		{src: testClient, dst: testVIP, proto: ipProtoICMP, icmpType: 8},
		{v6: true},
	} {
		f.Add(p.build(), uint8(0))
	}
	f.Add([]byte{0x4f}, uint8(1))
	f.Fuzz(func(t *testing.T, b []byte, offset uint8) {
		flt, _ := testFilter(t)
		off := int(offset % 32)
		kept := flt.Filter([][]byte{b, b}, off)
		for _, k := range kept {
			pi, v := parsePacket(k[off:])
			if v != pass || addr4(pi.src) != netip.MustParseAddr(testClient) {
				t.Fatalf("kept a packet that does not parse as the granted client's: %x", k)
			}
		}
		for len(flt.flows) > 0 {
			<-flt.flows
		}
	})
}
