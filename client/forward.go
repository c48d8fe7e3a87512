package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
)

// ParseTarget splits "APP", "APP:PORT", "[v6]:PORT" into a destination and
// port (0 when absent).
func ParseTarget(s string) (dest string, port uint16, err error) {
	if s == "" {
		return "", 0, errors.New("empty target; want APP or APP:PORT")
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return s, 0, nil
	}
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		if strings.Contains(err.Error(), "missing port") {
			return s, 0, nil
		}
		return "", 0, fmt.Errorf("target %q: %w", s, err)
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		return "", 0, fmt.Errorf("target %q: port must be 1–65535", s)
	}
	return host, uint16(n), nil
}

// Forward listens on listen (loopback only) and forwards every TCP
// connection to dest:port through the tunnel. It requests the grant before
// listening, so a denial is reported at once. It returns when ctx is done.
// ready, if non-nil, receives the bound address.
func (c *Client) Forward(ctx context.Context, listen, dest string, port uint16, ready chan<- net.Addr) error {
	resp, err := c.Grant(ctx, dest, "tcp", port)
	if err != nil {
		return err
	}
	if port == 0 {
		for _, p := range resp.Grant.Ports {
			if p.Proto == "tcp" {
				port = p.First
				break
			}
		}
		if port == 0 {
			return fmt.Errorf("app %s serves no TCP port", resp.Grant.App)
		}
	}
	ap, err := netip.ParseAddrPort(listen)
	if err != nil || !ap.Addr().IsLoopback() {
		return fmt.Errorf("--listen %q: give a loopback address and port, e.g. 127.0.0.1:8080", listen)
	}
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("forward: %w", err)
	}
	// Keep the grant renewed while the forward is open, not only while a
	// connection is: the user expects the port to keep working.
	release := c.acquire(resp.Grant.ID)
	defer release()
	c.log.Info("forwarding", "listen", l.Addr().String(), "app", resp.Grant.App, "destination", net.JoinHostPort(dest, strconv.Itoa(int(port))))
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
			return fmt.Errorf("forward: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.forwardOne(ctx, in, dest, port)
		}()
	}
}

func (c *Client) forwardOne(ctx context.Context, in net.Conn, dest string, port uint16) {
	defer in.Close()
	out, err := c.Dial(ctx, "tcp", dest, port)
	if err != nil {
		c.log.Warn("forward: connection not made", "destination", dest, "port", port, "err", err)
		return
	}
	defer out.Close()
	stop := context.AfterFunc(ctx, func() { in.Close(); out.Close() })
	defer stop()
	pipe(in, out)
}

// pipe copies both ways until both directions end.
func pipe(a, b net.Conn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(b, a)
		halfClose(b)
	}()
	_, _ = io.Copy(a, b)
	halfClose(a)
	<-done
}

func halfClose(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	} else {
		_ = c.Close()
	}
}
