package gateway

import (
	"encoding/binary"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/keyhole-net/keyhole/internal/api"
)

// The packet filter is the TUN mode's grant check (docs/gateway.md): every
// packet a client sends is checked against the grant table before the
// kernel sees it. It runs on wireguard-go's receive path, so it keeps its
// own copy of the grants, keyed by client address and read under an
// RWMutex taken once per batch, and allocates nothing per packet.

// verdict is what the filter decides about one packet.
type verdict uint8

const (
	pass verdict = iota
	refuseNoGrant
	refuseExpired
	refuseDestination
	refusePort
	refuseProtocol  // not IPv4, or an IP protocol no grant can cover
	refuseMalformed // too short, bad header lengths, tiny first fragment
	numVerdicts
)

// label is the verdict's "reason" label on keyhole_gateway_refused_total.
func (v verdict) label() string {
	switch v {
	case refuseNoGrant:
		return "no_grant"
	case refuseExpired:
		return "expired"
	case refuseDestination:
		return "destination"
	case refusePort:
		return "port"
	case refuseProtocol:
		return "protocol"
	case refuseMalformed:
		return "malformed"
	}
	return "pass"
}

// IP protocol numbers the filter knows.
const (
	ipProtoICMP = 1
	ipProtoTCP  = 6
	ipProtoUDP  = 17
)

// protoIndex maps an IP protocol to the filter's counter row.
func protoIndex(p uint8) int {
	switch p {
	case ipProtoTCP:
		return 0
	case ipProtoUDP:
		return 1
	case ipProtoICMP:
		return 2
	}
	return 3
}

func protoName(p uint8) string {
	return [...]string{"tcp", "udp", "icmp", "other"}[protoIndex(p)]
}

// portRule is one port range of a grant, its protocol as an IP protocol
// number.
type portRule struct {
	proto       uint8
	first, last uint16
}

// packetRule is one target of one grant: a destination prefix (as a
// masked IPv4 address and mask) and the grant's ports and expiry.
type packetRule struct {
	dst, mask uint32
	notAfter  int64 // Unix nanoseconds
	ports     []portRule
}

// clientRules are the rules of every grant of one client address.
type clientRules []packetRule

// decide checks a packet to dst from this client. checkPort false (ICMP,
// later fragments) asks only whether a live grant covers dst.
func (cr clientRules) decide(dst uint32, proto uint8, port uint16, checkPort bool, now int64) verdict {
	v := refuseDestination
	for i := range cr {
		r := &cr[i]
		if dst&r.mask != r.dst {
			continue
		}
		if now >= r.notAfter {
			v = refuseExpired
			continue
		}
		if !checkPort {
			return pass
		}
		for _, p := range r.ports {
			if p.proto == proto && port >= p.first && port <= p.last {
				return pass
			}
		}
		if v != refuseExpired {
			v = refusePort
		}
	}
	return v
}

// rulesFor converts grants (all of one client) to rules. IPv6 targets are
// skipped: the overlay, and so the TUN mode, is IPv4 only.
func rulesFor(gs []api.GatewayGrant) clientRules {
	var cr clientRules
	for _, g := range gs {
		var ports []portRule
		for _, p := range g.Ports {
			switch p.Proto {
			case "tcp":
				ports = append(ports, portRule{proto: ipProtoTCP, first: p.First, last: p.Last})
			case "udp":
				ports = append(ports, portRule{proto: ipProtoUDP, first: p.First, last: p.Last})
			}
		}
		for _, t := range g.Targets {
			pfx := t.Prefix.Masked()
			if !pfx.Addr().Unmap().Is4() {
				continue
			}
			bits := pfx.Bits()
			if pfx.Addr().Is4In6() {
				bits -= 96
			}
			if bits < 0 {
				continue
			}
			mask := uint32(0)
			if bits > 0 {
				mask = ^uint32(0) << (32 - bits)
			}
			cr = append(cr, packetRule{dst: ip4(pfx.Addr().Unmap()) & mask, mask: mask, notAfter: g.NotAfter.UnixNano(), ports: ports})
		}
	}
	return cr
}

func ip4(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func addr4(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// packetInfo is what the filter reads from a packet's headers.
type packetInfo struct {
	src, dst     uint32
	proto        uint8
	sport, dport uint16
	// laterFragment: a fragment with a non-zero offset, which carries no
	// transport header.
	laterFragment bool
	syn           bool // a TCP SYN without ACK: a new connection
}

// Minimum transport headers a first fragment must hold whole, so that a
// later fragment (offset ≥ 8 bytes) cannot overwrite the ports checked.
const (
	tcpHeaderLen  = 20
	udpHeaderLen  = 8
	icmpHeaderLen = 8
)

// ICMP types a client may send to an address it may reach: echo request
// (ping), destination unreachable (path MTU discovery, port unreachable)
// and time exceeded.
const (
	icmpEchoRequest    = 8
	icmpUnreachable    = 3
	icmpTimeExceeded   = 11
	ipv4HeaderLen      = 20
	ipv4FragOffsetMask = 0x1fff
)

// parsePacket reads an IPv4 packet's headers. It returns a refusal for
// anything it will not pass whatever the grants: not IPv4, malformed, IP
// options, an ICMP type other than the three above, an IP protocol other
// than TCP, UDP and ICMP.
func parsePacket(pkt []byte) (packetInfo, verdict) {
	var pi packetInfo
	if len(pkt) < 1 {
		return pi, refuseMalformed
	}
	switch pkt[0] >> 4 {
	case 4:
	case 6:
		return pi, refuseProtocol
	default:
		return pi, refuseMalformed
	}
	if len(pkt) < ipv4HeaderLen {
		return pi, refuseMalformed
	}
	ihl := int(pkt[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(pkt[2:4]))
	if ihl < ipv4HeaderLen || total < ihl || total > len(pkt) {
		return pi, refuseMalformed
	}
	if ihl != ipv4HeaderLen {
		// IP options (source routing, …): no client needs them, and a
		// forwarding kernel may act on some.
		return pi, refuseProtocol
	}
	pkt = pkt[:total]
	pi.proto = pkt[9]
	pi.src = binary.BigEndian.Uint32(pkt[12:16])
	pi.dst = binary.BigEndian.Uint32(pkt[16:20])
	switch pi.proto {
	case ipProtoTCP, ipProtoUDP, ipProtoICMP:
	default:
		return pi, refuseProtocol
	}
	if binary.BigEndian.Uint16(pkt[6:8])&ipv4FragOffsetMask != 0 {
		pi.laterFragment = true
		return pi, pass
	}
	l4 := pkt[ihl:]
	switch pi.proto {
	case ipProtoTCP:
		if len(l4) < tcpHeaderLen {
			return pi, refuseMalformed
		}
		pi.syn = l4[13]&0x12 == 0x02
	case ipProtoUDP:
		if len(l4) < udpHeaderLen {
			return pi, refuseMalformed
		}
	case ipProtoICMP:
		if len(l4) < icmpHeaderLen {
			return pi, refuseMalformed
		}
		switch l4[0] {
		case icmpEchoRequest, icmpUnreachable, icmpTimeExceeded:
		default:
			return pi, refuseProtocol
		}
		return pi, pass
	}
	pi.sport = binary.BigEndian.Uint16(l4[0:2])
	pi.dport = binary.BigEndian.Uint16(l4[2:4])
	return pi, pass
}

// flowStart is a new flow the filter saw: a TCP SYN or a UDP packet of a
// 5-tuple not seen for udpIdle. It is a value, so sending it allocates
// nothing.
type flowStart struct {
	src, dst     uint32
	proto        uint8
	sport, dport uint16
	at           int64 // Unix nanoseconds
}

// seenSlots is the size of the table of recent 5-tuples (a power of two).
// A collision only costs a repeated or a missed flow record.
const seenSlots = 1 << 12

// packetFilter is the TUN mode's per-packet grant check; it implements
// wg.PacketFilter.
type packetFilter struct {
	now     func() time.Time
	log     *slog.Logger
	logRate *rate.Limiter // refusal logs
	// refused[proto][verdict] are the resolved counters of
	// keyhole_gateway_refused_total.
	refused [4][numVerdicts]prometheus.Counter
	// flows receives new flows; nil turns flow detection off. Sends never
	// block: when it is full, records are dropped (and counted).
	flows       chan flowStart
	flowsLost   atomic.Uint64
	seen        [seenSlots]atomic.Uint64 // tag<<32 | seconds, by 5-tuple hash
	refusedSeen atomic.Uint64            // for tests

	mu      sync.RWMutex // guards clients
	clients map[uint32]clientRules
}

// newPacketFilter returns an empty filter (every packet refused) counting
// refusals on refused (labels proto, reason). flowQueue > 0 turns flow
// detection on with a queue of that many flows.
func newPacketFilter(now func() time.Time, log *slog.Logger, refused *prometheus.CounterVec, flowQueue int) *packetFilter {
	f := &packetFilter{
		now:     now,
		log:     log,
		logRate: rate.NewLimiter(1, 5),
		clients: make(map[uint32]clientRules),
	}
	for p := range f.refused {
		for v := range f.refused[p] {
			f.refused[p][v] = refused.WithLabelValues([...]string{"tcp", "udp", "icmp", "other"}[p], verdict(v).label())
		}
	}
	if flowQueue > 0 {
		f.flows = make(chan flowStart, flowQueue)
	}
	return f
}

// setClient replaces the rules of client ip with those of gs (none: the
// client is forgotten). The grant table calls it under its lock on every
// change, so a revocation is in force for the next packet.
func (f *packetFilter) setClient(ip netip.Addr, gs []api.GatewayGrant) {
	ip = ip.Unmap()
	if !ip.Is4() {
		return
	}
	cr := rulesFor(gs)
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(cr) == 0 {
		delete(f.clients, ip4(ip))
		return
	}
	f.clients[ip4(ip)] = cr
}

// allows reports whether the filter would pass a packet from src to dst
// (proto, destination port) now: conntrack entries it would not are
// deleted after a revocation.
func (f *packetFilter) allows(src, dst netip.Addr, proto uint8, port uint16) bool {
	src, dst = src.Unmap(), dst.Unmap()
	if !src.Is4() || !dst.Is4() {
		return false
	}
	now := f.now().UnixNano()
	f.mu.RLock()
	defer f.mu.RUnlock()
	cr, ok := f.clients[ip4(src)]
	if !ok {
		return false
	}
	return cr.decide(ip4(dst), proto, port, proto == ipProtoTCP || proto == ipProtoUDP, now) == pass
}

// Filter implements wg.PacketFilter: it keeps the packets a live grant of
// their source covers and drops the rest, counting and (rate-limited)
// logging each refusal. wireguard-go has checked each packet's source
// against the sending peer's allowed IPs, so a source address is the
// client's own.
func (f *packetFilter) Filter(bufs [][]byte, offset int) [][]byte {
	now := f.now().UnixNano()
	kept := bufs[:0]
	f.mu.RLock()
	// A batch comes from one peer, so nearly always from one client.
	var (
		lastSrc uint32
		cr      clientRules
		known   bool
		looked  bool
	)
	for _, b := range bufs {
		var pi packetInfo
		v := refuseMalformed
		if offset <= len(b) {
			pi, v = parsePacket(b[offset:])
		}
		if v == pass {
			if !looked || pi.src != lastSrc {
				cr, known = f.clients[pi.src]
				lastSrc, looked = pi.src, true
			}
			switch {
			case !known:
				v = refuseNoGrant
			case pi.laterFragment || pi.proto == ipProtoICMP:
				v = cr.decide(pi.dst, pi.proto, 0, false, now)
			default:
				v = cr.decide(pi.dst, pi.proto, pi.dport, true, now)
			}
		}
		if v != pass {
			f.refuse(pi, v)
			continue
		}
		if f.flows != nil && !pi.laterFragment {
			f.noteFlow(pi, now)
		}
		kept = append(kept, b)
	}
	f.mu.RUnlock()
	return kept
}

// refuse counts a dropped packet and logs it, at most once a second (a
// client can send refused packets at line rate).
func (f *packetFilter) refuse(pi packetInfo, v verdict) {
	f.refused[protoIndex(pi.proto)][v].Inc()
	f.refusedSeen.Add(1)
	if !f.logRate.Allow() {
		return
	}
	if v == refuseMalformed || v == refuseProtocol && pi.src == 0 {
		f.log.Info("packet refused", "proto", protoName(pi.proto), "reason", v.label())
		return
	}
	f.log.Info("packet refused", "proto", protoName(pi.proto), "client", addr4(pi.src).String(),
		"destination", netip.AddrPortFrom(addr4(pi.dst), pi.dport).String(), "reason", v.label())
}

// noteFlow reports a passed packet that starts a flow.
func (f *packetFilter) noteFlow(pi packetInfo, now int64) {
	switch {
	case pi.proto == ipProtoTCP && !pi.syn, pi.proto != ipProtoTCP && pi.proto != ipProtoUDP:
		return
	}
	if !f.unseen(pi, now) {
		return // a SYN retransmitted, a UDP flow seen recently
	}
	select {
	case f.flows <- flowStart{src: pi.src, dst: pi.dst, proto: pi.proto, sport: pi.sport, dport: pi.dport, at: now}:
	default:
		f.flowsLost.Add(1)
	}
}

// unseen reports whether a 5-tuple was not seen for udpIdle, and marks it
// seen. A slot's timestamp is refreshed at most every few seconds, so a
// busy UDP flow does not write it per packet.
func (f *packetFilter) unseen(pi packetInfo, now int64) bool {
	h := uint64(pi.src)<<32 | uint64(pi.dst) ^ uint64(pi.proto)<<24
	h ^= (uint64(pi.sport)<<16 | uint64(pi.dport)) * 0x9e3779b97f4a7c15
	h *= 0xff51afd7ed558ccd
	h ^= h >> 29
	slot := &f.seen[h&(seenSlots-1)]
	tag := h >> 32
	sec := uint64(uint32(now / int64(time.Second)))
	old := slot.Load()
	age := uint32(sec) - uint32(old)
	if old>>32 == tag && time.Duration(age)*time.Second < udpIdle {
		if age >= 5 {
			slot.Store(tag<<32 | sec)
		}
		return false
	}
	slot.Store(tag<<32 | sec)
	return true
}
