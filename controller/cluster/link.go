package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// The direct channel: requests from one controller to another, such as a
// grant push for a gateway whose stream the other holds, and its answer.
// Gossip suits what every member must learn eventually; a request that
// one member answers while a client waits wants a connection. So each
// controller keeps one persistent HTTP/2 connection to each peer it calls,
// on the gossip port (TCP), in mutual TLS where both sides must present a
// controller certificate of the cluster's CA — the same checks as gossip
// streams, told apart from them by ALPN. Requests on one connection are
// multiplexed; a dead connection is dialled again on the next request.

const (
	// linkProto names the direct channel in the TLS handshake.
	linkProto = "keyhole-link/1"

	// MaxLinkBodyBytes bounds a request or answer on the direct channel.
	MaxLinkBodyBytes = 64 << 10

	// linkPingAfter and linkPingTimeout make an idle connection prove it
	// is alive, so a peer that vanished without a FIN is found out.
	linkPingAfter   = 15 * time.Second
	linkPingTimeout = 5 * time.Second
)

// ErrLink means the direct channel to a peer could not carry a request:
// the peer is unknown, unreachable or did not answer. The caller may fall
// back to gossip or to the database re-sync.
var ErrLink = errors.New("cluster link")

// linkPeerKey keys the calling controller's ID in a link request's context.
type linkPeerKey struct{}

// LinkPeer returns the ID of the controller that sent a request over the
// direct channel; Config.Link handlers read it from the request's
// context. The peer proved it with its certificate.
func LinkPeer(ctx context.Context) (string, bool) {
	id, ok := ctx.Value(linkPeerKey{}).(string)
	return id, ok && id != ""
}

// linkConn is a direct-channel connection after its mutual TLS handshake,
// with the peer it proved to be. net/http sees a plain connection and
// speaks HTTP/2 on it with prior knowledge: the TLS (and the identity
// check that makes it worth having) is ours, not net/http's, which would
// want the ALPN "h2" and a CA for server names.
type linkConn struct {
	net.Conn
	peer string
}

// h2Only is the protocol set of both ends of the direct channel.
func h2Only() *http.Protocols {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &p
}

// newLinkClient is the client side of the direct channel: an HTTP/2
// transport whose "host" is the peer's node name, dialled at the peer's
// gossip address.
func (c *Cluster) newLinkClient() *http.Transport {
	return &http.Transport{
		Protocols: h2Only(),
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			name, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, fmt.Errorf("%w: %s: %w", ErrLink, addr, err)
			}
			m, ok := c.member(name)
			if !ok {
				return nil, fmt.Errorf("%w: controller %s is not a live member", ErrLink, name)
			}
			conn, err := c.tr.dialLink(ctx, name, m.Addr.String())
			if err != nil {
				return nil, err
			}
			return &linkConn{Conn: conn, peer: name}, nil
		},
		HTTP2: &http.HTTP2Config{
			SendPingTimeout:  linkPingAfter,
			PingTimeout:      linkPingTimeout,
			WriteByteTimeout: linkPingTimeout,
		},
		MaxResponseHeaderBytes: 8 << 10,
		IdleConnTimeout:        linkIdleTimeout,
	}
}

// linkIdleTimeout closes a direct-channel connection unused this long.
const linkIdleTimeout = 10 * time.Minute

// linkPeerState is what Call keeps per peer: whether a connection is up.
type linkPeerState struct {
	up   atomic.Bool
	dial chan struct{} // cap 1: held by the one call that may dial while !up
}

// linkPeer returns peer's state, made on first use. Peers are the
// cluster's controllers, so the map stays small.
func (c *Cluster) linkPeer(peer string) *linkPeerState {
	c.linkMu.Lock()
	defer c.linkMu.Unlock()
	st, ok := c.linkPeers[peer]
	if !ok {
		st = &linkPeerState{dial: make(chan struct{}, 1)}
		c.linkPeers[peer] = st
	}
	return st
}

// member returns the live member named name.
func (c *Cluster) member(name string) (Member, bool) {
	c.membersMu.Lock()
	defer c.membersMu.Unlock()
	m, ok := c.table[name]
	return m, ok
}

// Call sends body (JSON) to path on the controller named peer over the
// direct channel and returns its answer. An error that wraps ErrLink means
// the request may not have reached the peer's handler or its answer was
// lost; one that does not is the handler's refusal (a status other than
// 200), with its message.
func (c *Cluster) Call(ctx context.Context, peer, path string, body []byte) ([]byte, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	if !ValidNodeName(peer) || peer == c.cfg.NodeName {
		return nil, fmt.Errorf("%w: cannot call %q", ErrLink, peer)
	}
	if len(body) > MaxLinkBodyBytes {
		return nil, fmt.Errorf("call %s%s: body of %d bytes is over the limit of %d", peer, path, len(body), MaxLinkBodyBytes)
	}
	// "http": net/http speaks HTTP/2 with prior knowledge on what
	// newLinkClient dials, which is mutual TLS underneath.
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+peer+path, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("call %s%s: %w", peer, path, err)
	}
	req.Header.Set("Content-Type", "application/json")
	// Until a connection to peer is up, calls go one at a time, so a burst
	// of them opens one connection, not one each, and then share it.
	st := c.linkPeer(peer)
	if !st.up.Load() {
		select {
		case st.dial <- struct{}{}:
			defer func() { <-st.dial }()
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: call %s%s: waiting for the connection: %w", ErrLink, peer, path, ctx.Err())
		}
	}
	resp, err := c.link.RoundTrip(req)
	st.up.Store(err == nil)
	// A call that raced with Shutdown leaves no connection behind.
	defer func() {
		if c.closed.Load() {
			c.link.CloseIdleConnections()
		}
	}()
	if err != nil {
		return nil, fmt.Errorf("%w: call %s%s: %w", ErrLink, peer, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxLinkBodyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: call %s%s: read answer: %w", ErrLink, peer, path, err)
	}
	if len(b) > MaxLinkBodyBytes {
		return nil, fmt.Errorf("%w: call %s%s: answer over %d bytes", ErrLink, peer, path, MaxLinkBodyBytes)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("call %s%s: %s: %s", peer, path, strconv.Itoa(resp.StatusCode), bytes.TrimSpace(b))
	}
	return b, nil
}

// Tell sends body to path on every other live member over the direct
// channel, without waiting for them: each call runs on a goroutine of the
// Cluster, bounded by timeout, and a failure is only logged at debug level
// — what must arrive travels by gossip or the database as well. Tell
// after Shutdown does nothing.
func (c *Cluster) Tell(path string, body []byte, timeout time.Duration) {
	var peers []string
	c.membersMu.Lock()
	for name := range c.table {
		if name != c.cfg.NodeName {
			peers = append(peers, name)
		}
	}
	c.membersMu.Unlock()
	c.tellMu.Lock()
	defer c.tellMu.Unlock()
	if c.tellClosed {
		return
	}
	for _, peer := range peers {
		c.tellWG.Add(1)
		go func() {
			defer c.tellWG.Done()
			ctx, cancel := context.WithTimeout(c.ctx, timeout)
			defer cancel()
			if _, err := c.Call(ctx, peer, path, body); err != nil {
				c.log.Debug("cluster: direct message not delivered; gossip carries it", "peer", peer, "path", path, "err", err)
			}
		}()
	}
}

// dialLink opens a direct-channel connection to the controller name at
// addr: mutual TLS, and the peer must prove it is that controller.
func (t *tlsTransport) dialLink(ctx context.Context, name, addr string) (net.Conn, error) {
	if t.isBlocked(name, addr) {
		return nil, fmt.Errorf("%w: dial %s at %s: unreachable (partitioned by test)", ErrLink, name, addr)
	}
	ctx, cancel := context.WithTimeout(ctx, t.cfg.handshakeTimeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w: dial %s at %s: %w", ErrLink, name, addr, err)
	}
	conf := t.tlsConfig(linkProto)
	conf.InsecureSkipVerify = true // verified below, against our CA and identity rules
	conf.VerifyConnection = func(cs tls.ConnectionState) error {
		_, _, err := t.verify(cs, linkProto, name)
		return err
	}
	conn := tls.Client(raw, conf)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("%w: dial %s at %s: tls: %w", ErrLink, name, addr, err)
	}
	return conn, nil
}

// newLinkServer is the server side of the direct channel: HTTP/2 with
// prior knowledge on connections serveStream accepted (linkConn), which
// reach it through a listener of its own. ConnContext gives handlers the
// caller's ID (LinkPeer).
func (t *tlsTransport) newLinkServer() (*http.Server, *linkListener) {
	l := &linkListener{conns: make(chan net.Conn), done: make(chan struct{}), addr: t.tcp.Addr()}
	h := t.cfg.link
	if h == nil {
		h = http.NotFoundHandler() // never DefaultServeMux
	}
	srv := &http.Server{
		Handler:           h,
		Protocols:         h2Only(),
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: 1000},
		ReadHeaderTimeout: t.cfg.handshakeTimeout,
		IdleTimeout:       linkIdleTimeout,
		MaxHeaderBytes:    8 << 10,
		ErrorLog:          log.New(io.Discard, "", 0),
		BaseContext:       func(net.Listener) context.Context { return t.ctx },
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if lc, ok := c.(*linkConn); ok {
				return context.WithValue(ctx, linkPeerKey{}, lc.peer)
			}
			return ctx
		},
		ConnState: func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				t.linkConns.Add(1)
			case http.StateClosed, http.StateHijacked:
				t.linkConns.Add(-1)
			}
		},
	}
	return srv, l
}

// linkListener hands the direct channel's connections to its server.
type linkListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  atomic.Bool
	addr  net.Addr
}

// Accept implements net.Listener.
func (l *linkListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (l *linkListener) Close() error {
	if l.once.CompareAndSwap(false, true) {
		close(l.done)
	}
	return nil
}

// Addr implements net.Listener.
func (l *linkListener) Addr() net.Addr { return l.addr }

// serveLink hands conn, a direct-channel connection from the controller
// peer, to the link server; it closes conn when the server is gone.
func (t *tlsTransport) serveLink(conn *tls.Conn, peer string) {
	select {
	case t.linkLn.conns <- &linkConn{Conn: conn, peer: peer}:
	case <-t.linkLn.done:
		conn.Close()
	}
}
