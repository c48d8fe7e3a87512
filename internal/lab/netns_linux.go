package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Run calls fn on a goroutine whose OS thread is switched into host's network
// namespace, and returns fn's error. This is how in-process Keyhole
// components run inside a lab.
//
// A socket belongs to the namespace it was created in: listeners and UDP
// sockets opened in fn keep working in host's namespace after fn returns,
// from any goroutine. Goroutines started inside fn do NOT inherit the
// namespace (they run on other threads), so fn must open every socket itself
// and may hand them to goroutines. Nor does fn see /etc/netns/<ns>/hosts:
// that is a bind mount "ip netns exec" makes; an in-process component that
// must resolve AppName takes the name from its own configuration (e.g. the
// gateway's Config.Hosts).
//
// fn must return in bounded time; Run cannot interrupt it. A panic in fn is
// re-raised on the caller's goroutine, so test cleanups still run.
func (l *Lab) Run(host string, fn func() error) error {
	ns := l.Namespace(host)
	if ns == "" {
		return fmt.Errorf("lab: unknown host %q", host)
	}
	type result struct {
		err      error
		panic    any
		panicked bool
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		restore, err := enter(filepath.Join("/run/netns", ns))
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("lab: enter %s: %w", ns, err)}
			return
		}
		var r result
		func() {
			defer func() {
				if p := recover(); p != nil {
					r.panic, r.panicked = p, true
				}
			}()
			r.err = fn()
		}()
		if err := restore(); err != nil {
			// The thread is stuck in the lab's namespace: keep it locked
			// so it dies with this goroutine instead of running others.
			if r.err == nil {
				r.err = fmt.Errorf("lab: leave %s: %w", ns, err)
			}
		} else {
			runtime.UnlockOSThread()
		}
		done <- r
	}()
	r := <-done
	if r.panicked {
		panic(r.panic)
	}
	return r.err
}

// enter switches the calling (locked) thread into the namespace at path and
// returns a function that switches it back.
func enter(path string) (restore func() error, err error) {
	self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
	orig, err := unix.Open(self, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(orig)
		return nil, err
	}
	defer unix.Close(target)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		unix.Close(orig)
		return nil, err
	}
	return func() error {
		defer unix.Close(orig)
		return unix.Setns(orig, unix.CLONE_NEWNET)
	}, nil
}

// probe reports whether a TCP connection to addr's discard port gets an
// answer; a refusal counts, it proves the path.
func probe(addr netip.Addr) error {
	c, err := net.DialTimeout("tcp", netip.AddrPortFrom(addr, 9).String(), 200*time.Millisecond)
	if err == nil {
		c.Close()
		return nil
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return nil
	}
	return err
}
