package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

// The agent's control socket: a Unix socket in the data directory, owner
// only, through which keyhole status, connect, down and logout talk to a
// running `keyhole up`. Each connection carries one request and one
// answer, a JSON line each.

const fileControl = "agent.sock"

// Control operations.
const (
	OpStatus  = "status"  // answer: Status
	OpConnect = "connect" // Target, Listen → Forward: a forward run by the agent
	OpDown    = "down"    // the agent stops (releasing its grants)
	OpRoute   = "route"   // Target → Grant: TUN mode grants and routes the app, held until idle
)

// ErrNoAgent means no agent serves the data directory.
var ErrNoAgent = errors.New("no keyhole agent is running for this data directory")

// ControlRequest is one request on the control socket.
type ControlRequest struct {
	Op     string `json:"op"`
	Target string `json:"target,omitempty"` // APP[:PORT], for OpConnect
	Listen string `json:"listen,omitempty"` // loopback address, for OpConnect
}

// ControlResponse answers a ControlRequest; Error is set on failure.
type ControlResponse struct {
	Error   string         `json:"error,omitempty"`
	Status  *Status        `json:"status,omitempty"`
	Forward *ForwardReport `json:"forward,omitempty"`
	Grant   *api.Grant     `json:"grant,omitempty"`
}

// ForwardReport describes a forward the agent started.
type ForwardReport struct {
	Listen string    `json:"listen"`
	Target string    `json:"target"`
	Grant  api.Grant `json:"grant"`
}

// ControlPath is the control socket of the agent for dir.
func ControlPath(dir string) string { return filepath.Join(dir, fileControl) }

const (
	maxControlRequest = 4 << 10
	controlTimeout    = 30 * time.Second
)

// ServeControl serves the control socket until ctx is done; stop is called
// for an OpDown request. Only the agent's own user (or root) is answered:
// the socket is mode 0600 in a 0700 directory, and each connection's peer
// credentials are checked as well. A socket left behind by an agent that
// died is replaced; one another agent is serving is not.
func (c *Client) ServeControl(ctx context.Context, stop func()) error {
	path := ControlPath(c.cfg.DataDir)
	if _, err := Control(ctx, c.cfg.DataDir, ControlRequest{Op: OpStatus}); err == nil {
		return fmt.Errorf("control socket %s: another keyhole agent is running", path)
	}
	_ = os.Remove(path)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	l.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return fmt.Errorf("control socket: %w", err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	stopAccept := context.AfterFunc(ctx, func() { l.Close() })
	defer stopAccept()
	defer l.Close()
	for {
		conn, err := l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("control socket: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			c.handleControl(ctx, &wg, conn, stop)
		}()
	}
}

// handleControl answers one request.
func (c *Client) handleControl(ctx context.Context, wg *sync.WaitGroup, conn *net.UnixConn, stop func()) {
	_ = conn.SetDeadline(time.Now().Add(controlTimeout))
	answer := func(r ControlResponse) { _ = json.NewEncoder(conn).Encode(r) }
	if uid, err := peerUID(conn); err != nil || (uid != uint32(os.Getuid()) && uid != 0) {
		c.log.Warn("control socket: refused a request from another user", "peer_uid", uid, "err", err)
		answer(ControlResponse{Error: "permission denied: this agent belongs to another user"})
		return
	}
	sc := bufio.NewScanner(conn)
	sc.Buffer(make([]byte, 0, 512), maxControlRequest)
	if !sc.Scan() {
		answer(ControlResponse{Error: "empty or oversized request"})
		return
	}
	var req ControlRequest
	if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
		answer(ControlResponse{Error: "malformed request: " + err.Error()})
		return
	}
	switch req.Op {
	case OpStatus:
		st := c.Status()
		answer(ControlResponse{Status: &st})
	case OpDown:
		answer(ControlResponse{})
		c.log.Info("stopping on request from the control socket")
		stop()
	case OpConnect:
		fr, err := c.startForward(ctx, wg, req)
		if err != nil {
			answer(ControlResponse{Error: err.Error()})
			return
		}
		answer(ControlResponse{Forward: fr})
	case OpRoute:
		g, err := c.Route(ctx, req.Target)
		if err != nil {
			answer(ControlResponse{Error: err.Error()})
			return
		}
		answer(ControlResponse{Grant: &g})
	default:
		answer(ControlResponse{Error: fmt.Sprintf("unknown operation %q", req.Op)})
	}
}

// startForward grants req.Target and forwards req.Listen to it until the
// agent stops.
func (c *Client) startForward(ctx context.Context, wg *sync.WaitGroup, req ControlRequest) (*ForwardReport, error) {
	dest, port, err := ParseTarget(req.Target)
	if err != nil {
		return nil, err
	}
	listen := req.Listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	gctx, cancel := context.WithTimeout(ctx, controlTimeout)
	resp, err := c.Grant(gctx, dest, "tcp", port)
	cancel()
	if err != nil {
		return nil, err
	}
	ready := make(chan net.Addr, 1)
	errc := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := c.Forward(ctx, listen, dest, port, ready)
		if err != nil && ctx.Err() == nil {
			c.log.Warn("forward ended", "target", req.Target, "err", err)
		}
		errc <- err
	}()
	select {
	case a := <-ready:
		return &ForwardReport{Listen: a.String(), Target: req.Target, Grant: resp.Grant}, nil
	case err := <-errc:
		return nil, fmt.Errorf("forward %s: %w", listen, err)
	}
}

// Route grants target (APP or APP:PORT) in TUN mode: its addresses are
// routed into the device and the agent holds the grant until it is idle.
func (c *Client) Route(ctx context.Context, target string) (api.Grant, error) {
	if c.tun == nil {
		return api.Grant{}, errors.New("the agent runs in userspace mode (no TUN device); give --listen to forward a port, or restart it with keyhole up --tun")
	}
	dest, port, err := ParseTarget(target)
	if err != nil {
		return api.Grant{}, err
	}
	gctx, cancel := context.WithTimeout(ctx, controlTimeout)
	defer cancel()
	resp, err := c.Grant(gctx, dest, "tcp", port)
	if err != nil {
		return api.Grant{}, err
	}
	return resp.Grant, nil
}

// Control sends one request to the agent serving dir. It fails with
// ErrNoAgent when none does.
func Control(ctx context.Context, dir string, req ControlRequest) (ControlResponse, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", ControlPath(dir))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return ControlResponse{}, ErrNoAgent
		}
		return ControlResponse{}, fmt.Errorf("control socket: %w", err)
	}
	defer conn.Close()
	deadline := time.Now().Add(controlTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = conn.SetDeadline(deadline)
	b, _ := json.Marshal(req)
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return ControlResponse{}, fmt.Errorf("control socket: %w", err)
	}
	var resp ControlResponse
	if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&resp); err != nil {
		return ControlResponse{}, fmt.Errorf("control socket: %w", err)
	}
	if resp.Error != "" {
		return resp, fmt.Errorf("agent: %s", resp.Error)
	}
	return resp, nil
}
