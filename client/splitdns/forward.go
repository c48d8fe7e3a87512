package splitdns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// forward sends the query pkt (question q) to the upstreams in order
// within forwardBudget and returns the first good answer, parsed and raw.
// The query goes out as it came except for its ID: a fresh random one, so
// that an off-path attacker cannot guess it from the client's, checked on
// the answer with the question (RFC 5452). Over UDP a truncated answer is
// fetched again over TCP; a query that came over TCP goes over TCP.
// SERVFAIL and REFUSED make it try the next upstream, and are returned
// only if no upstream does better.
func (s *Server) forward(ctx context.Context, pkt []byte, q dns.Question, tcp bool) (*dns.Msg, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, forwardBudget)
	defer cancel()
	deadline, _ := ctx.Deadline()

	query := make([]byte, len(pkt))
	copy(query, pkt)
	id := uint16(rand.Uint32())
	binary.BigEndian.PutUint16(query[0:2], id)

	var (
		fallback    *dns.Msg
		fallbackRaw []byte
		errs        []error
	)
	for i, up := range s.upstreams {
		if ctx.Err() != nil {
			break
		}
		// Share what is left among the upstreams still to try, but give
		// each a fair chance: a dead first upstream must not eat the
		// whole budget, a slow one must not be cut off at once.
		try := max(time.Until(deadline)/time.Duration(len(s.upstreams)-i), minUpstreamTry)
		tctx, tcancel := context.WithTimeout(ctx, try)
		resp, raw, err := s.exchange(tctx, up, query, id, q, tcp)
		tcancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("upstream %v: %w", up, err))
			continue
		}
		if resp.Rcode == dns.RcodeServerFailure || resp.Rcode == dns.RcodeRefused {
			if fallback == nil {
				fallback, fallbackRaw = resp, raw
			}
			continue
		}
		return resp, raw, nil
	}
	if fallback != nil {
		return fallback, fallbackRaw, nil
	}
	if len(errs) == 0 {
		errs = append(errs, ctx.Err())
	}
	return nil, nil, errors.Join(errs...)
}

// exchange asks one upstream, over UDP then TCP if the answer is
// truncated, or over TCP only. If the TCP retry fails, the truncated
// answer is the answer: the client may still retry over TCP itself.
func (s *Server) exchange(ctx context.Context, up netip.AddrPort, query []byte, id uint16, q dns.Question, tcp bool) (*dns.Msg, []byte, error) {
	if tcp {
		return s.exchangeOn(ctx, "tcp", up, query, id, q)
	}
	resp, raw, err := s.exchangeOn(ctx, "udp", up, query, id, q)
	if err != nil || !resp.Truncated {
		return resp, raw, err
	}
	if full, fullRaw, err := s.exchangeOn(ctx, "tcp", up, query, id, q); err == nil {
		return full, fullRaw, nil
	}
	return resp, raw, nil
}

// maxAnswerBytes is the largest answer taken from an upstream: the DNS
// maximum, over UDP (with EDNS) as over TCP.
const maxAnswerBytes = dns.MaxMsgSize

// exchangeOn sends query to up over network ("udp" or "tcp") and waits
// for the answer that matches id and q until ctx is done. Over UDP it
// ignores answers that do not match (late answers, spoofing attempts)
// instead of failing on them.
func (s *Server) exchangeOn(ctx context.Context, network string, up netip.AddrPort, query []byte, id uint16, q dns.Question) (*dns.Msg, []byte, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, up.String())
	if err != nil {
		return nil, nil, fmt.Errorf("dial %s: %w", network, err)
	}
	defer c.Close()
	// Deadlines bound the exchange; closing on ctx stops it at once
	// when the server stops.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if deadline, ok := ctx.Deadline(); ok {
		if err := c.SetDeadline(deadline); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", network, err)
		}
	}
	dc := &dns.Conn{Conn: c}
	if _, err := dc.Write(query); err != nil {
		return nil, nil, fmt.Errorf("send over %s: %w", network, err)
	}
	bufp, _ := s.answerBufs.Get().(*[]byte)
	if bufp == nil {
		b := make([]byte, maxAnswerBytes)
		bufp = &b
	}
	defer s.answerBufs.Put(bufp)
	buf := *bufp
	for {
		n, err := dc.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return nil, nil, fmt.Errorf("answer over %s: %w", network, err)
		}
		resp := new(dns.Msg)
		err = resp.Unpack(buf[:n])
		if err == nil && (resp.Id != id || !resp.Response || !answers(resp, q)) {
			err = errors.New("answer does not match the query")
		}
		if err != nil {
			if network == "udp" {
				continue
			}
			return nil, nil, fmt.Errorf("answer over %s: %w", network, err)
		}
		raw := make([]byte, n)
		copy(raw, buf[:n])
		return resp, raw, nil
	}
}

// answers reports whether resp answers q. Names compare without case:
// some resolvers randomise it (DNS 0x20) and echo it back. An error answer
// may come without the question (FORMERR from a server that does not take
// EDNS, for one); the client should see it rather than a timeout.
func answers(resp *dns.Msg, q dns.Question) bool {
	if len(resp.Question) == 0 {
		return resp.Rcode != dns.RcodeSuccess
	}
	if len(resp.Question) != 1 {
		return false
	}
	r := resp.Question[0]
	return r.Qtype == q.Qtype && r.Qclass == q.Qclass && strings.EqualFold(r.Name, q.Name)
}
