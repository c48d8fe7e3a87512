// Package splitdns is the DNS resolver a client runs on its overlay address
// in TUN mode. It answers app names (the domains the client may reach
// through Keyhole) with their virtual IPv4 addresses, asking the client
// through Config.Resolve, and forwards every other name unchanged to the
// resolvers the system used before (split DNS, DESIGN.md §5).
//
// What lives here: the UDP and TCP listeners, app name matching, per-source
// rate limiting of app lookups and forwarding to the upstream resolvers.
// What does not: pointing the system at this resolver (package
// client/sysdns), grants and virtual addresses (package client), and any
// caching of answers (the system's stub resolver caches; Resolve is
// expected to be cheap for a name that holds a live grant).
//
// Messages are parsed and built with github.com/miekg/dns; the server loops
// are our own so that every resource is bounded: in-flight queries, TCP
// connections, message sizes and the rate limiter's memory.
package splitdns

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/time/rate"
)

// ErrDenied is returned by Config.Resolve when policy refuses the name to
// this device; the query is answered REFUSED at once (never a timeout).
var ErrDenied = errors.New("splitdns: access denied")

// ErrNotApp is returned by Config.Resolve when a name under an app domain
// turns out not to be an app; the query is forwarded upstream, and later
// queries for the name go upstream too for a while (see notAppTTL).
var ErrNotApp = errors.New("splitdns: not an app")

// Config configures a Server.
type Config struct {
	// Listen is where the server takes queries, over UDP and TCP on the
	// same port (port 0: any free port, the same for both).
	Listen netip.AddrPort
	// Upstreams are the resolvers the system used before; every name that
	// is not an app goes to them unchanged, tried in order. None: such
	// names are answered REFUSED. An upstream equal to the bound address is
	// dropped (it would be a loop).
	Upstreams []netip.AddrPort
	// Resolve maps an app name (lowercase, no trailing dot) to its virtual
	// IPv4 address; it may take a grant round trip. It returns an error
	// wrapping ErrDenied or ErrNotApp for those cases; any other error is
	// answered SERVFAIL. Concurrent lookups of one name share one call.
	// It must return when ctx is done (Run waits for it). Required.
	Resolve func(ctx context.Context, name string) (netip.Addr, error)
	// AnswerTimeout bounds the wait for Resolve for one query (default
	// 1s); past it the query is answered SERVFAIL.
	AnswerTimeout time.Duration
	// TTL of app answers (default 10s): short, because access lasts as
	// long as a grant and stub resolvers should ask again soon.
	TTL time.Duration
	// RateLimit and Burst bound app lookups (the queries that call
	// Resolve) per source address (defaults 20/s, burst 40). Over the
	// limit a query is answered REFUSED without calling Resolve.
	// rate.Inf turns the limit off.
	RateLimit rate.Limit
	Burst     int
	Logger    *slog.Logger
}

// Defaults and bounds. The bounds keep a flood of queries (or of TCP
// connections) from growing memory or goroutines without limit; what does
// not fit is dropped, and clients retry.
const (
	defaultAnswerTimeout = time.Second
	defaultTTL           = 10 * time.Second
	defaultRateLimit     = 20
	defaultBurst         = 40

	// forwardBudget bounds one forwarded query over all upstreams; stub
	// resolvers retry after about 5 s, so an answer must come before.
	forwardBudget = 2 * time.Second
	// minUpstreamTry is the least time one upstream is given while the
	// budget lasts, so that a slow first upstream is not cut short just
	// because others are configured after it.
	minUpstreamTry = 500 * time.Millisecond

	maxInFlight     = 512  // queries being answered, UDP and TCP together
	maxTCPConns     = 64   // open client TCP connections
	maxTCPPipelined = 16   // queries in flight on one TCP connection
	maxSources      = 4096 // per-source rate limiters kept
	maxNotApp       = 1024 // names remembered as not an app

	// maxQueryBytes is the largest query accepted, UDP or TCP. Real queries
	// are a few hundred bytes even with EDNS options; larger ones are
	// abuse.
	maxQueryBytes = 4096
	// ednsUDPSize is what we advertise in our own answers: the size that
	// avoids fragmentation on nearly every path (DNS flag day 2020).
	ednsUDPSize = 1232

	tcpIdleTimeout  = 10 * time.Second
	tcpWriteTimeout = 5 * time.Second

	// notAppTTL is how long a name that Resolve called not an app is
	// forwarded without asking Resolve again.
	notAppTTL = time.Minute
)

// Stats counts what the server did since New.
type Stats struct {
	Queries     uint64 // well-formed queries taken
	AppAnswers  uint64 // app names answered with an address
	NoData      uint64 // app names answered with no records (AAAA, HTTPS, ...)
	Refused     uint64 // REFUSED answers: denials, rate limits, no upstream
	RateLimited uint64 // app lookups over the source's rate (also counted in Refused)
	Forwarded   uint64 // queries answered by an upstream resolver
	Malformed   uint64 // packets dropped or answered FORMERR/NOTIMP
	ServFail    uint64 // SERVFAIL answers: Resolve failed or timed out, upstreams failed
	Dropped     uint64 // queries and TCP connections dropped for lack of capacity
}

// counters are Stats, updated concurrently.
type counters struct {
	queries, appAnswers, noData, refused, rateLimited,
	forwarded, malformed, servFail, dropped atomic.Uint64
}

// Server is a split DNS resolver. Create with New, then Run; SetDomains may
// be called at any time.
type Server struct {
	cfg       Config
	log       *slog.Logger
	udp       *net.UDPConn
	tcp       *net.TCPListener
	addr      netip.AddrPort
	upstreams []netip.AddrPort
	limits    *sourceLimits
	domains   atomic.Pointer[domainSet]
	running   atomic.Bool
	stats     counters

	tcpIdle  time.Duration // tcpIdleTimeout; tests shorten it
	inflight chan struct{} // one token per query being answered
	tcpConns chan struct{} // one token per open TCP connection

	mu     sync.Mutex // guards calls, notApp
	calls  map[string]*resolveCall
	notApp *lru[string, time.Time] // name → until when it is forwarded

	wg sync.WaitGroup // every goroutine Run started, directly or not

	bufs       sync.Pool // of *[]byte, maxQueryBytes+1 long: UDP reads
	answerBufs sync.Pool // of *[]byte, maxAnswerBytes long: upstream reads
}

// New binds the UDP and TCP sockets of cfg.Listen; the server answers once
// Run runs.
func New(cfg Config) (*Server, error) {
	if cfg.Resolve == nil {
		return nil, errors.New("splitdns: Config.Resolve is required")
	}
	if !cfg.Listen.IsValid() {
		return nil, fmt.Errorf("splitdns: listen address %v is not valid", cfg.Listen)
	}
	if cfg.AnswerTimeout <= 0 {
		cfg.AnswerTimeout = defaultAnswerTimeout
	}
	if cfg.TTL <= 0 {
		cfg.TTL = defaultTTL
	}
	if cfg.RateLimit <= 0 {
		cfg.RateLimit = defaultRateLimit
	}
	if cfg.Burst <= 0 {
		cfg.Burst = defaultBurst
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	udp, tcp, err := listen(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("splitdns: listen on %v: %w", cfg.Listen, err)
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		udp:      udp,
		tcp:      tcp,
		addr:     udp.LocalAddr().(*net.UDPAddr).AddrPort(),
		limits:   newSourceLimits(cfg.RateLimit, cfg.Burst, maxSources),
		tcpIdle:  tcpIdleTimeout,
		inflight: make(chan struct{}, maxInFlight),
		tcpConns: make(chan struct{}, maxTCPConns),
		calls:    make(map[string]*resolveCall),
		notApp:   newLRU[string, time.Time](maxNotApp),
	}
	for _, up := range cfg.Upstreams {
		if !up.IsValid() || unmapPort(up) == unmapPort(s.addr) {
			s.log.Warn("dns upstream dropped: invalid or our own address", "upstream", up)
			continue
		}
		s.upstreams = append(s.upstreams, up)
	}
	s.domains.Store(&domainSet{})
	return s, nil
}

// listen binds UDP and then TCP on the same port. With port 0 the port the
// kernel picks for UDP may be taken for TCP; then it tries another.
func listen(ap netip.AddrPort) (*net.UDPConn, *net.TCPListener, error) {
	const tries = 10
	var lastErr error
	for range tries {
		udp, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
		if err != nil {
			return nil, nil, fmt.Errorf("udp: %w", err)
		}
		port := udp.LocalAddr().(*net.UDPAddr).Port
		tcp, err := net.ListenTCP("tcp", &net.TCPAddr{IP: ap.Addr().AsSlice(), Port: port, Zone: ap.Addr().Zone()})
		if err == nil {
			return udp, tcp, nil
		}
		udp.Close()
		lastErr = fmt.Errorf("tcp: %w", err)
		if ap.Port() != 0 {
			break
		}
	}
	return nil, nil, lastErr
}

// Addr returns the address the server listens on, UDP and TCP.
func (s *Server) Addr() netip.AddrPort { return s.addr }

// SetDomains sets the app name patterns: exact names ("wiki.corp.internal")
// and wildcards ("*.corp.internal", matching names with at least one more
// label in front of corp.internal, not corp.internal itself). Matching is
// case-insensitive and ignores a trailing dot; an exact name wins over a
// wildcard. Bad patterns are logged and skipped. Safe to call at any time.
func (s *Server) SetDomains(patterns []string) {
	d, errs := newDomainSet(patterns)
	for _, err := range errs {
		s.log.Warn("dns domain pattern ignored", "err", err)
	}
	s.domains.Store(d)
	// What Resolve said about names may not hold for the new set.
	s.mu.Lock()
	s.notApp = newLRU[string, time.Time](maxNotApp)
	s.mu.Unlock()
	s.log.Debug("dns domains set", "exact", len(d.exact), "wildcard", len(d.wild))
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	c := &s.stats
	return Stats{
		Queries:     c.queries.Load(),
		AppAnswers:  c.appAnswers.Load(),
		NoData:      c.noData.Load(),
		Refused:     c.refused.Load(),
		RateLimited: c.rateLimited.Load(),
		Forwarded:   c.forwarded.Load(),
		Malformed:   c.malformed.Load(),
		ServFail:    c.servFail.Load(),
		Dropped:     c.dropped.Load(),
	}
}

// Close releases the sockets of a server whose Run was never called (Run
// closes them itself).
func (s *Server) Close() error {
	if s.running.Load() {
		return errors.New("splitdns: Close while Run runs: cancel its context instead")
	}
	return errors.Join(ignoreClosed(s.udp.Close()), ignoreClosed(s.tcp.Close()))
}

// Run answers queries until ctx is done, then closes the sockets and
// returns once every goroutine it started has stopped. It returns an error
// only if a socket fails for another reason.
func (s *Server) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("splitdns: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.log.Debug("dns resolver listening", "addr", s.addr, "upstreams", s.upstreams)

	errc := make(chan error, 2)
	s.wg.Add(2)
	go func() { defer s.wg.Done(); errc <- s.serveUDP(ctx) }()
	go func() { defer s.wg.Done(); errc <- s.serveTCP(ctx) }()

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc: // a socket failed: stop the other one too
	}
	cancel()
	s.udp.Close()
	s.tcp.Close()
	s.wg.Wait()
	return err
}

func unmapPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// serveUDP reads queries and answers each in its own goroutine, as many
// at once as the in-flight bound allows; beyond it queries are dropped.
func (s *Server) serveUDP(ctx context.Context) error {
	for {
		bufp, _ := s.bufs.Get().(*[]byte)
		if bufp == nil {
			b := make([]byte, maxQueryBytes+1)
			bufp = &b
		}
		buf := *bufp
		n, src, err := s.udp.ReadFromUDPAddrPort(buf)
		if err != nil || n > maxQueryBytes {
			s.bufs.Put(bufp)
		}
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("splitdns: read udp: %w", err)
		}
		if n > maxQueryBytes {
			s.stats.malformed.Add(1)
			s.log.Debug("dns query dropped: too large", "src", src, "bytes", n)
			continue
		}
		select {
		case s.inflight <- struct{}{}:
		default:
			s.bufs.Put(bufp)
			s.stats.dropped.Add(1)
			s.log.Debug("dns query dropped: too many in flight", "src", src)
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { s.bufs.Put(bufp); <-s.inflight }()
			resp := s.handle(ctx, buf[:n], src.Addr().Unmap(), false)
			if resp == nil {
				return
			}
			if _, err := s.udp.WriteToUDPAddrPort(resp, src); err != nil && ctx.Err() == nil {
				s.log.Debug("dns answer not sent", "src", src, "err", err)
			}
		}()
	}
}

// serveTCP accepts connections up to maxTCPConns; more are closed at once.
func (s *Server) serveTCP(ctx context.Context) error {
	for {
		c, err := s.tcp.AcceptTCP()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// Out of file descriptors and the like: wait a moment
			// rather than spin, as net/http does.
			s.log.Debug("dns tcp accept failed", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		select {
		case s.tcpConns <- struct{}{}:
		default:
			s.stats.dropped.Add(1)
			s.log.Debug("dns tcp connection refused: too many open", "src", c.RemoteAddr())
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-s.tcpConns }()
			s.serveTCPConn(ctx, c)
		}()
	}
}

// serveTCPConn answers the queries of one connection, several at once (a
// stub may send A and AAAA back to back), until the client closes it, it
// idles for tcpIdleTimeout, a message is malformed or too large, or ctx is
// done.
func (s *Server) serveTCPConn(ctx context.Context, c *net.TCPConn) {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	defer c.Close()
	src := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	dc := &dns.Conn{Conn: c}
	var (
		wmu     sync.Mutex // serialises answers on c
		pending sync.WaitGroup
		slots   = make(chan struct{}, maxTCPPipelined)
	)
	defer pending.Wait() // runs before c.Close: answers in flight are sent
	for {
		if err := c.SetReadDeadline(time.Now().Add(s.tcpIdle)); err != nil {
			return
		}
		buf := make([]byte, maxQueryBytes)
		n, err := dc.Read(buf) // length-prefixed; longer than buf: error
		if err == nil && n == 0 {
			err = errors.New("empty message")
		}
		if err != nil {
			var ne net.Error
			switch {
			case errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed):
			case errors.As(err, &ne) && ne.Timeout():
				s.log.Debug("dns tcp connection idle: closed", "src", src)
			default: // too large, cut short, empty
				s.stats.malformed.Add(1)
				s.log.Debug("dns tcp connection closed: bad message", "src", src, "err", err)
			}
			return
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		select {
		case s.inflight <- struct{}{}:
		default:
			<-slots
			s.stats.dropped.Add(1)
			s.log.Debug("dns query dropped: too many in flight", "src", src)
			continue
		}
		pending.Add(1)
		go func() {
			defer pending.Done()
			defer func() { <-s.inflight; <-slots }()
			resp := s.handle(ctx, buf[:n], src.Addr().Unmap(), true)
			if resp == nil {
				return
			}
			wmu.Lock()
			defer wmu.Unlock()
			if err := c.SetWriteDeadline(time.Now().Add(tcpWriteTimeout)); err != nil {
				return
			}
			if _, err := dc.Write(resp); err != nil {
				s.log.Debug("dns tcp answer not sent", "src", src, "err", err)
				c.Close() // a half-written message ruins the stream
			}
		}()
	}
}
