package client

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// SOCKS5 (RFC 1928) constants we use.
const (
	socksVersion      = 5
	socksNoAuth       = 0
	socksNoAcceptable = 0xff
	socksConnect      = 1
	atypIPv4          = 1
	atypDomain        = 3
	atypIPv6          = 4

	repSuccess        = 0
	repFailure        = 1
	repNotAllowed     = 2
	repHostUnreach    = 4
	repRefused        = 5
	repCmdUnsupported = 7
	repAtypUnsupp     = 8
)

// socksRequest is a parsed CONNECT request.
type socksRequest struct {
	cmd  byte
	host string // domain or IP text, never resolved locally
	port uint16
}

// errSocks carries the reply code to send for a bad request.
type errSocks struct {
	rep byte
	msg string
}

func (e *errSocks) Error() string { return e.msg }

// readSocksGreeting reads the method negotiation and answers it.
func readSocksGreeting(r io.Reader, w io.Writer) error {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return fmt.Errorf("socks greeting: %w", err)
	}
	if hdr[0] != socksVersion {
		return fmt.Errorf("socks greeting: version %d, want 5", hdr[0])
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(r, methods); err != nil {
		return fmt.Errorf("socks greeting: %w", err)
	}
	for _, m := range methods {
		if m == socksNoAuth {
			_, err := w.Write([]byte{socksVersion, socksNoAuth})
			return err
		}
	}
	_, _ = w.Write([]byte{socksVersion, socksNoAcceptable})
	return errors.New("socks greeting: client offers no 'no authentication' method (the proxy listens on loopback only)")
}

// readSocksRequest parses a request. It never panics on any input.
func readSocksRequest(r io.Reader) (socksRequest, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return socksRequest{}, fmt.Errorf("socks request: %w", err)
	}
	if hdr[0] != socksVersion {
		return socksRequest{}, &errSocks{repFailure, fmt.Sprintf("socks request: version %d", hdr[0])}
	}
	req := socksRequest{cmd: hdr[1]}
	switch hdr[3] {
	case atypIPv4:
		var b [4]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return socksRequest{}, err
		}
		req.host = netip.AddrFrom4(b).String()
	case atypIPv6:
		var b [16]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return socksRequest{}, err
		}
		req.host = netip.AddrFrom16(b).Unmap().String()
	case atypDomain:
		var n [1]byte
		if _, err := io.ReadFull(r, n[:]); err != nil {
			return socksRequest{}, err
		}
		if n[0] == 0 {
			return socksRequest{}, &errSocks{repHostUnreach, "socks request: empty domain"}
		}
		b := make([]byte, n[0])
		if _, err := io.ReadFull(r, b); err != nil {
			return socksRequest{}, err
		}
		req.host = string(b)
	default:
		return socksRequest{}, &errSocks{repAtypUnsupp, fmt.Sprintf("socks request: address type %d", hdr[3])}
	}
	var p [2]byte
	if _, err := io.ReadFull(r, p[:]); err != nil {
		return socksRequest{}, err
	}
	req.port = binary.BigEndian.Uint16(p[:])
	if req.cmd != socksConnect {
		return req, &errSocks{repCmdUnsupported, fmt.Sprintf("socks: command %d not supported (CONNECT only)", req.cmd)}
	}
	if req.port == 0 {
		return req, &errSocks{repHostUnreach, "socks: port 0"}
	}
	return req, nil
}

func writeSocksReply(w io.Writer, rep byte) error {
	// Bound address 0.0.0.0:0: clients ignore it for CONNECT.
	_, err := w.Write([]byte{socksVersion, rep, 0, atypIPv4, 0, 0, 0, 0, 0, 0})
	return err
}

// ServeSOCKS runs a SOCKS5 proxy (CONNECT, remote name resolution) on
// listen (loopback only) until ctx is done. Each destination is matched to
// an app by the controller; a grant is requested on demand. ready, if
// non-nil, receives the bound address.
func (c *Client) ServeSOCKS(ctx context.Context, listen string, ready chan<- net.Addr) error {
	ap, err := netip.ParseAddrPort(listen)
	if err != nil || !ap.Addr().IsLoopback() {
		return fmt.Errorf("--socks5 %q: give a loopback address and port, e.g. 127.0.0.1:1080", listen)
	}
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("socks5: %w", err)
	}
	c.log.Info("SOCKS5 proxy listening", "listen", l.Addr().String())
	if ready != nil {
		ready <- l.Addr()
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	for {
		in, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("socks5: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.serveSOCKSConn(ctx, in)
		}()
	}
}

func (c *Client) serveSOCKSConn(ctx context.Context, in net.Conn) {
	defer in.Close()
	_ = in.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(in)
	if err := readSocksGreeting(br, in); err != nil {
		c.log.Debug("socks5", "err", err)
		return
	}
	req, err := readSocksRequest(br)
	if err != nil {
		var se *errSocks
		if errors.As(err, &se) {
			_ = writeSocksReply(in, se.rep)
		}
		c.log.Debug("socks5", "err", err)
		return
	}
	out, err := c.Dial(ctx, "tcp", req.host, req.port)
	if err != nil {
		rep := byte(repHostUnreach)
		switch {
		case errors.Is(err, ErrDenied):
			rep = repNotAllowed
		case isRefused(err):
			rep = repRefused
		}
		c.log.Info("socks5: connection not made", "destination", net.JoinHostPort(req.host, fmt.Sprint(req.port)), "err", err)
		_ = writeSocksReply(in, rep)
		return
	}
	defer out.Close()
	if err := writeSocksReply(in, repSuccess); err != nil {
		return
	}
	_ = in.SetDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { in.Close(); out.Close() })
	defer stop()
	// Bytes the client sent after the request are in br.
	pipe(&bufferedConn{Conn: in, r: br}, out)
}

// isRefused reports a refusal by the gateway (TCP RST or ICMP port
// unreachable); internal/wg maps both to syscall.ECONNREFUSED.
func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// bufferedConn reads through a bufio.Reader that may hold early bytes.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// CloseWrite half-closes the underlying TCP connection.
func (b *bufferedConn) CloseWrite() error {
	if cw, ok := b.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
