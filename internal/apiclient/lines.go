package apiclient

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"
)

// ErrStreamSilent ends ReadLines when the stream stayed silent for longer
// than its idle limit: the connection is presumed dead.
var ErrStreamSilent = errors.New("stream silent")

// ReadLines opens the long-lived GET path (see Stream), calls opened with the
// response once it is up, then fn with each line (without the newline) until
// the stream ends, fn fails, ctx is done or nothing arrives for idle; the
// controller's pings keep a healthy stream from going silent. Lines longer
// than maxLine end the stream with an error. The returned error says why it
// ended; it is never nil.
func (c *Client) ReadLines(ctx context.Context, path string, idle time.Duration, maxLine int, opened func(*http.Response), fn func([]byte) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	resp, err := c.Stream(ctx, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if opened != nil {
		opened(resp)
	}

	// The idle watchdog cancels the request when nothing arrives in time.
	var lastRead atomic.Int64
	lastRead.Store(time.Now().UnixNano())
	watchdog := make(chan struct{})
	go func() {
		defer close(watchdog)
		t := time.NewTicker(min(time.Second, idle/4))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if time.Since(time.Unix(0, lastRead.Load())) > idle {
					cancel(fmt.Errorf("%w for %v", ErrStreamSilent, idle))
					return
				}
			}
		}
	}()
	defer func() { cancel(nil); <-watchdog }()

	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, min(64<<10, maxLine)), maxLine)
	for sc.Scan() {
		lastRead.Store(time.Now().UnixNano())
		if err := fn(sc.Bytes()); err != nil {
			return err
		}
	}
	if cause := context.Cause(ctx); cause != nil {
		return fmt.Errorf("GET %s: %w", path, cause)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("GET %s: read: %w", path, err)
	}
	return fmt.Errorf("GET %s: the controller closed the stream", path)
}
