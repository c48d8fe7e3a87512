package main

import (
	"strings"
	"testing"
	"time"
)

func TestDemoCommand(t *testing.T) {
	isolate(t)
	demo := start(t, "demo", "--listen", "127.0.0.1:0")
	waitFor(t, 60*time.Second, func() string {
		if code, done := demo.exited(); done {
			t.Fatalf("demo exited %d:\n%s\n%s", code, demo.out, demo.err)
		}
		if !strings.Contains(demo.out.String(), "Ctrl-C stops everything") {
			return "demo has not reached 'try next':\n" + demo.out.String()
		}
		return ""
	})
	if code := demo.stop(t); code != 0 {
		t.Errorf("demo exited %d after Ctrl-C: %s", code, demo.err)
	}
	if s := demo.err.String(); s != "" {
		t.Errorf("demo wrote to stderr:\n%s", s)
	}
}
