package splitdns

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"
)

// handle answers one raw query from src; it returns the raw answer, or nil
// to send nothing. tcp says the query came over TCP (then it is forwarded
// over TCP, and answers are not cut to the UDP size). ctx is the server's:
// it ends only when Run stops. handle never keeps pkt after it returns.
func (s *Server) handle(ctx context.Context, pkt []byte, src netip.Addr, tcp bool) []byte {
	var req dns.Msg
	if err := req.Unpack(pkt); err != nil {
		s.stats.malformed.Add(1)
		if len(pkt) < headerLen || req.Response {
			// Without a header there is no ID to answer to; and an
			// answer to a response could start a loop.
			s.log.Debug("dns packet dropped: unparsable", "src", src, "bytes", len(pkt), "err", err)
			return nil
		}
		s.log.Debug("dns query malformed", "src", src, "err", err)
		return s.pack(errorReply(&req, dns.RcodeFormatError), false, nil)
	}
	if req.Response {
		s.stats.malformed.Add(1)
		s.log.Debug("dns packet dropped: a response", "src", src)
		return nil
	}
	if req.Opcode != dns.OpcodeQuery {
		s.stats.malformed.Add(1)
		s.log.Debug("dns query refused: opcode not implemented", "src", src, "opcode", req.Opcode)
		return s.pack(errorReply(&req, dns.RcodeNotImplemented), false, nil)
	}
	// miekg/dns lowers a QDCOUNT that overstates the questions present,
	// so read the count as sent (bytes 4–5 of the header, RFC 1035 4.1.1).
	if qdcount := binary.BigEndian.Uint16(pkt[4:6]); qdcount != 1 || len(req.Question) != 1 {
		s.stats.malformed.Add(1)
		s.log.Debug("dns query malformed: want one question", "src", src, "qdcount", qdcount)
		return s.pack(errorReply(&req, dns.RcodeFormatError), false, nil)
	}
	s.stats.queries.Add(1)

	q := req.Question[0]
	name := canonicalName(q.Name)
	if _, app := s.domains.Load().match(name); !app || s.knownNotApp(name) {
		return s.forwardReply(ctx, pkt, &req, src, tcp)
	}
	if q.Qtype != dns.TypeA || q.Qclass != dns.ClassINET {
		// AAAA, HTTPS, SVCB, MX...: apps have IPv4 virtual addresses
		// only. Answering at once keeps browsers from waiting on AAAA
		// and HTTPS while A takes a grant round trip.
		s.stats.noData.Add(1)
		return s.pack(reply(&req, dns.RcodeSuccess), tcp, &req)
	}
	if !s.limits.allow(src, time.Now()) {
		s.stats.refused.Add(1)
		s.stats.rateLimited.Add(1)
		s.log.Debug("dns app lookup refused: rate limit", "src", src, "name", name)
		return s.pack(refusedReply(&req, "Keyhole: too many app lookups"), tcp, &req)
	}
	addr, err := s.resolve(ctx, name)
	switch {
	case err == nil && addr.Unmap().Is4():
		resp := reply(&req, dns.RcodeSuccess)
		resp.Answer = []dns.RR{&dns.A{
			Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: uint32(s.cfg.TTL / time.Second)},
			A:   net.IP(addr.Unmap().AsSlice()),
		}}
		s.stats.appAnswers.Add(1)
		return s.pack(resp, tcp, &req)
	case err == nil:
		s.log.Debug("dns app lookup failed: not an IPv4 address", "name", name, "addr", addr)
	case errors.Is(err, ErrDenied):
		s.stats.refused.Add(1)
		s.log.Debug("dns app lookup denied", "src", src, "name", name, "err", err)
		return s.pack(refusedReply(&req, "Keyhole: access denied by policy"), tcp, &req)
	case errors.Is(err, ErrNotApp):
		s.markNotApp(name)
		return s.forwardReply(ctx, pkt, &req, src, tcp)
	default:
		s.log.Debug("dns app lookup failed", "src", src, "name", name, "err", err)
	}
	s.stats.servFail.Add(1)
	return s.pack(reply(&req, dns.RcodeServerFailure), tcp, &req)
}

// headerLen is the size of the DNS header: a shorter packet carries no ID.
const headerLen = 12

// forwardReply forwards a query that is not for an app and relays the
// answer; without upstreams it answers REFUSED.
func (s *Server) forwardReply(ctx context.Context, pkt []byte, req *dns.Msg, src netip.Addr, tcp bool) []byte {
	if len(s.upstreams) == 0 {
		s.stats.refused.Add(1)
		return s.pack(reply(req, dns.RcodeRefused), tcp, req)
	}
	resp, raw, err := s.forward(ctx, pkt, req.Question[0], tcp)
	if err != nil {
		s.stats.servFail.Add(1)
		s.log.Debug("dns forward failed", "src", src, "name", req.Question[0].Name, "err", err)
		return s.pack(reply(req, dns.RcodeServerFailure), tcp, req)
	}
	s.stats.forwarded.Add(1)
	size := udpSize(req)
	if tcp || len(raw) <= size {
		// The upstream's bytes as they came, with the client's ID.
		binary.BigEndian.PutUint16(raw[0:2], req.Id)
		return raw
	}
	// Fetched over TCP after a truncated UDP answer, and larger than the
	// client takes over UDP: cut it to size; the client sees TC set and
	// asks again over TCP.
	resp.Id = req.Id
	resp.Truncate(size)
	out, err := resp.Pack()
	if err != nil {
		s.log.Debug("dns forwarded answer not packed", "name", req.Question[0].Name, "err", err)
		return nil
	}
	return out
}

// udpSize is the largest UDP answer req's sender takes (RFC 6891 6.2.5).
func udpSize(req *dns.Msg) int {
	if opt := req.IsEdns0(); opt != nil {
		return max(int(opt.UDPSize()), dns.MinMsgSize)
	}
	return dns.MinMsgSize
}

// reply starts an answer to req: same ID, question and RD, with RA set
// (names that are not apps are resolved for the client, recursively).
func reply(req *dns.Msg, rcode int) *dns.Msg {
	resp := new(dns.Msg)
	resp.SetRcode(req, rcode)
	resp.Authoritative = rcode == dns.RcodeSuccess
	resp.RecursionAvailable = true
	return resp
}

// refusedReply is REFUSED with an Extended DNS Error (RFC 8914, code 18
// Prohibited) that tools such as dig show, saying why.
func refusedReply(req *dns.Msg, why string) *dns.Msg {
	resp := reply(req, dns.RcodeRefused)
	if req.IsEdns0() != nil {
		resp.SetEdns0(ednsUDPSize, false)
		opt := resp.IsEdns0()
		opt.Option = append(opt.Option, &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeProhibited, ExtraText: why})
	}
	return resp
}

// errorReply answers a query we cannot take: header only, no question,
// since it may be what is wrong.
func errorReply(req *dns.Msg, rcode int) *dns.Msg {
	resp := new(dns.Msg)
	resp.Id = req.Id
	resp.Response = true
	resp.Opcode = req.Opcode
	resp.RecursionDesired = req.RecursionDesired
	resp.Rcode = rcode
	return resp
}

// pack packs one of our own answers; with req set, it adds an OPT record
// when req had one and cuts the answer to the UDP size the client takes.
func (s *Server) pack(resp *dns.Msg, tcp bool, req *dns.Msg) []byte {
	if req != nil {
		if req.IsEdns0() != nil && resp.IsEdns0() == nil {
			resp.SetEdns0(ednsUDPSize, false)
		}
		if !tcp {
			resp.Truncate(udpSize(req))
		}
	}
	out, err := resp.Pack()
	if err != nil {
		s.log.Debug("dns answer not packed", "err", err)
		return nil
	}
	return out
}

// resolveCall is one Resolve call that concurrent queries for a name share.
type resolveCall struct {
	done chan struct{} // closed when addr and err are set
	addr netip.Addr
	err  error
}

// resolve returns Resolve's answer for name, sharing one call among
// concurrent queries. The call is bounded by AnswerTimeout and by ctx (the
// server's life); each query waits at most AnswerTimeout from its own
// arrival, so a query that joins a slow call late still gets an answer in
// time.
func (s *Server) resolve(ctx context.Context, name string) (netip.Addr, error) {
	s.mu.Lock()
	c, ok := s.calls[name]
	if !ok {
		c = &resolveCall{done: make(chan struct{})}
		s.calls[name] = c
		// The caller's goroutine is counted in s.wg, so this Add
		// cannot race with Run's Wait.
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			rctx, cancel := context.WithTimeout(ctx, s.cfg.AnswerTimeout)
			defer cancel()
			addr, err := s.cfg.Resolve(rctx, name)
			s.mu.Lock()
			delete(s.calls, name)
			s.mu.Unlock()
			c.addr, c.err = addr, err
			close(c.done)
		}()
	}
	s.mu.Unlock()

	t := time.NewTimer(s.cfg.AnswerTimeout)
	defer t.Stop()
	select {
	case <-c.done:
		return c.addr, c.err
	case <-t.C:
		return netip.Addr{}, context.DeadlineExceeded
	case <-ctx.Done():
		return netip.Addr{}, ctx.Err()
	}
}

// knownNotApp reports whether Resolve recently called name not an app.
func (s *Server) knownNotApp(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	until, ok := s.notApp.get(name)
	if ok && time.Now().After(until) {
		s.notApp.remove(name)
		return false
	}
	return ok
}

func (s *Server) markNotApp(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.notApp.put(name, time.Now().Add(notAppTTL))
}
