package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/keyhole-net/keyhole/internal/api"
)

func TestErrorMessage(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"plain", errors.New("give --user NAME"), "give --user NAME"},
		{"API error shows its message only", fmt.Errorf("login: %w", &api.Error{Code: api.CodeUnauthorized, Message: "wrong user or password"}), "wrong user or password"},
		{"denial names its rule", &api.Error{Code: api.CodeDenied, Message: "denied by rule #1", Rule: "rule_x"}, "denied by rule #1 (rule rule_x)"},
		{"API error without a message", &api.Error{Code: "http_502"}, "http_502: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := errorMessage(tc.err); got != tc.want {
				t.Errorf("errorMessage = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestLoggerIsJSONOffATerminal(t *testing.T) {
	var buf bytes.Buffer
	log, err := newLogger(&buf, "debug")
	if err != nil {
		t.Fatal(err)
	}
	log.Debug("hello", "grant_id", "grt_1")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil || rec["msg"] != "hello" || rec["grant_id"] != "grt_1" {
		t.Errorf("log line %q: %v", buf.String(), err)
	}
	buf.Reset()
	log, _ = newLogger(&buf, "WARN")
	log.Info("quiet")
	if buf.Len() != 0 {
		t.Errorf("info logged at warn level: %q", buf.String())
	}
	if _, err := newLogger(&buf, "loud"); err == nil || !strings.Contains(err.Error(), "--log-level") {
		t.Errorf("bad level: %v", err)
	}
}

func TestVersion(t *testing.T) {
	isolate(t)
	out := mustRun(t, "", "version")
	if !strings.HasPrefix(out, "keyhole ") || !strings.Contains(out, fmt.Sprintf("protocol %d", api.Version)) {
		t.Errorf("version printed %q", out)
	}
}
