package main

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/cmd/keyhole/internal/onebox"
	"github.com/keyhole-net/keyhole/internal/api"
)

// syncBuffer is a bytes.Buffer safe for a command writing while a test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// result is one finished command line.
type result struct {
	code           int
	stdout, stderr string
}

// isolate gives the test its own config and data directories and clears
// every KEYHOLE_* variable, so the developer's machine cannot leak in.
func isolate(t *testing.T) {
	t.Helper()
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_CONFIG_HOME", home+"/.config")
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "KEYHOLE_") {
			t.Setenv(k, "")
		}
	}
}

// keyhole runs one command line in-process and waits for it.
func keyhole(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out, errb syncBuffer
	root := newRootCmd(&out, &errb)
	root.SetIn(strings.NewReader(stdin))
	code := execute(ctx, root, args, &errb)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// mustRun runs a command line that must succeed and returns its stdout.
func mustRun(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	r := keyhole(t, stdin, args...)
	if r.code != 0 {
		t.Fatalf("keyhole %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// background is a command line running until stopped.
type background struct {
	out, err *syncBuffer
	cancel   context.CancelFunc
	done     chan struct{} // closed when the command has returned
	code     int           // exit code, once done is closed
}

// start runs a command line in the background; t.Cleanup stops it.
func start(t *testing.T, args ...string) *background {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b := &background{out: &syncBuffer{}, err: &syncBuffer{}, cancel: cancel, done: make(chan struct{})}
	root := newRootCmd(b.out, b.err)
	root.SetIn(strings.NewReader(""))
	go func() {
		defer close(b.done)
		b.code = execute(ctx, root, args, b.err)
	}()
	t.Cleanup(func() { b.stop(t) })
	return b
}

// stop cancels the command (as SIGINT would) and returns its exit code.
func (b *background) stop(t *testing.T) int {
	t.Helper()
	b.cancel()
	select {
	case <-b.done:
		return b.code
	case <-time.After(15 * time.Second):
		t.Fatalf("command did not stop within 15s of cancel\nstdout: %s\nstderr: %s", b.out, b.err)
		return -1
	}
}

// exited returns the exit code if the command has ended.
func (b *background) exited() (int, bool) {
	select {
	case <-b.done:
		return b.code, true
	default:
		return 0, false
	}
}

// waitFor polls cond until it returns "" or timeout passes; the last
// non-empty answer says what was wrong.
func waitFor(t *testing.T, timeout time.Duration, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, msg)
		}
		<-tick.C
	}
}

const testPassword = "correct horse battery"

// system is a onebox with the wiki behind a gateway, alice (eng, allowed
// the wiki) and bob (no rule).
type system struct {
	box  *onebox.Box
	wiki *onebox.WebApp
}

// adminFlags are the flags that point keyhole admin at the box.
func (s *system) adminFlags() []string {
	return []string{"--controller", s.box.URL, "--token", s.box.AdminToken, "--ca-fingerprint", s.box.Fingerprint}
}

// newBox starts a controller; opts may change its config (a short grant
// lifetime, say) before it starts.
func newBox(t *testing.T, opts ...func(*onebox.Config)) *system {
	t.Helper()
	cfg := onebox.Config{Dir: t.TempDir(), FastPasswords: true}
	for _, o := range opts {
		o(&cfg)
	}
	box, err := onebox.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(box.Close)
	return &system{box: box}
}

func newSystem(t *testing.T, opts ...func(*onebox.Config)) *system {
	t.Helper()
	s := newBox(t, opts...)
	ctx := context.Background()
	var err error
	if s.wiki, err = onebox.StartWebApp("wiki"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.wiki.Close)
	a := s.box.Admin
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.AddGatewayGroup(ctx, "site"))
	must(a.AddGroup(ctx, "eng"))
	must(a.AddUser(ctx, api.UserCreate{Name: "alice", Password: testPassword, Groups: []string{"eng"}}))
	must(a.AddUser(ctx, api.UserCreate{Name: "bob", Password: testPassword}))
	must(a.AddApp(ctx, api.AppCreate{
		Name: "wiki", Domains: []string{"wiki.corp.internal"}, GatewayGroup: "site",
		Ports: []api.PortRange{{Proto: "tcp", First: s.wiki.Port(), Last: s.wiki.Port()}},
	}))
	must(a.AddPolicy(ctx, api.PolicyRuleCreate{Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"wiki"}}))
	must(s.box.AddGateway(ctx, onebox.GatewayOptions{Group: "site", Name: "gw1", MaxBackoff: 500 * time.Millisecond,
		Hosts: map[string]netip.Addr{"wiki.corp.internal": onebox.Loopback}}))
	return s
}
