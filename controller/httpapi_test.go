package controller

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
)

// A request its client abandoned (or that shutdown ended) is not an
// internal error: no ERROR line, which would page someone for nothing.
func TestWriteErrorCanceledIsNotInternal(t *testing.T) {
	var logs bytes.Buffer
	c := &Controller{log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := httptest.NewRequest("GET", "/v1/device/events", nil).WithContext(ctx)
	c.writeError(httptest.NewRecorder(), r, fmt.Errorf("session: %w", context.Canceled))
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Fatalf("canceled request logged as an error:\n%s", logs.String())
	}
	// A real internal error still is one.
	logs.Reset()
	c.writeError(httptest.NewRecorder(), httptest.NewRequest("GET", "/v1/apps", nil), fmt.Errorf("store: %w", context.DeadlineExceeded))
	if !strings.Contains(logs.String(), "level=ERROR") {
		t.Fatalf("internal error not logged:\n%s", logs.String())
	}
}
