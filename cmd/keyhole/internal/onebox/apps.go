package onebox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// WebApp is a small private web app on loopback: the stand-in for the
// wiki, CRM or build server a company hides behind Keyhole.
type WebApp struct {
	Name string
	Addr *net.TCPAddr
	srv  *http.Server
	done chan struct{}
}

// StartWebApp serves a page naming the app at "/" and n bytes at
// "/bytes?n=N".
func StartWebApp(name string) (*WebApp, error) {
	l, err := ListenTCP()
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "<h1>%s</h1><p>Hello from the private app %s, reached through Keyhole.</p>\n", name, name)
	})
	a := &WebApp{Name: name, Addr: l.Addr().(*net.TCPAddr), done: make(chan struct{})}
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		defer close(a.done)
		_ = a.srv.Serve(l)
	}()
	return a, nil
}

// Port returns the app's TCP port.
func (a *WebApp) Port() uint16 { return uint16(a.Addr.Port) }

// Close stops the app.
func (a *WebApp) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = a.srv.Shutdown(ctx)
	<-a.done
}

// EchoServer echoes TCP streams (and, on the same port number, UDP
// datagrams) on loopback: the app for throughput and stream tests.
type EchoServer struct {
	Addr *net.TCPAddr
	l    net.Listener
	pc   net.PacketConn
	wg   sync.WaitGroup

	mu    sync.Mutex // guards conns
	conns map[net.Conn]struct{}
}

// StartEcho starts an echo server. With discard, TCP input is read and
// dropped instead of echoed (for one-way throughput).
func StartEcho(discard bool) (*EchoServer, error) {
	l, err := ListenTCP()
	if err != nil {
		return nil, err
	}
	e := &EchoServer{Addr: l.Addr().(*net.TCPAddr), l: l, conns: make(map[net.Conn]struct{})}
	if e.pc, err = net.ListenPacket("udp", e.Addr.String()); err != nil {
		// The UDP port may be taken; UDP echo is then unavailable.
		e.pc = nil
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			e.mu.Lock()
			e.conns[c] = struct{}{}
			e.mu.Unlock()
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				defer func() {
					e.mu.Lock()
					delete(e.conns, c)
					e.mu.Unlock()
					c.Close()
				}()
				buf := make([]byte, 256<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 && !discard {
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	if e.pc != nil {
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			buf := make([]byte, 65535)
			for {
				n, from, err := e.pc.ReadFrom(buf)
				if err != nil {
					if errors.Is(err, net.ErrClosed) {
						return
					}
					continue
				}
				_, _ = e.pc.WriteTo(buf[:n], from)
			}
		}()
	}
	return e, nil
}

// Port returns the echo port (TCP, and UDP when available).
func (e *EchoServer) Port() uint16 { return uint16(e.Addr.Port) }

// HasUDP reports whether UDP echo runs.
func (e *EchoServer) HasUDP() bool { return e.pc != nil }

// Close stops the server and its connections.
func (e *EchoServer) Close() {
	e.l.Close()
	if e.pc != nil {
		e.pc.Close()
	}
	e.mu.Lock()
	for c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()
	e.wg.Wait()
}
