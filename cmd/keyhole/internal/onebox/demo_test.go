package onebox

import (
	"context"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/apiclient"
)

func TestRunDemo(t *testing.T) {
	baseline := runtime.NumGoroutine()
	out := newSyncBuffer()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	infos := make(chan DemoInfo, 1)
	done := make(chan error, 1)
	started := time.Now()
	go func() {
		done <- RunDemo(ctx, DemoConfig{
			Out: out, Listen: "127.0.0.1:0", ForwardListen: "127.0.0.1:0",
			Ready: func(in DemoInfo) { infos <- in },
		})
	}()
	var info DemoInfo
	select {
	case info = <-infos:
	case err := <-done:
		t.Fatalf("demo ended before its tour was over: %v\n%s", err, out)
	case <-time.After(60 * time.Second):
		t.Fatalf("demo did not reach 'try next' within 60s:\n%s", out)
	}
	t.Logf("tour took %s", time.Since(started))
	text := out.String()
	for _, want := range []string{
		"✓ Controller up on " + info.URL,
		"✓ alice fetched http://wiki.corp.internal:",
		"Hello from the private app wiki",
		`✗ bob → wiki: denied. The controller said: no policy rule allows user "bob"`,
		`✗ alice → payroll: denied.`,
		"the open connection closed",
		"new grant grt_",
		"Try next",
		"curl http://" + info.WikiForward + "/",
		"admin grant list --controller " + info.URL + " --token " + info.AdminToken + " --ca-fingerprint " + info.Fingerprint,
		"--user bob --password-stdin",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("narration lacks %q", want)
		}
	}
	if strings.Count(text, "✓")+strings.Count(text, "✗") != 14 || strings.Contains(text, "over the 1s target") {
		t.Errorf("want 14 steps, revocation within 1s:\n%s", text)
	}
	if t.Failed() {
		t.Logf("narration:\n%s", text)
	}

	// What it printed works: the forward reaches the wiki, the admin
	// credentials reach the controller.
	body, err := httpGet(t, nil, "http://"+info.WikiForward+"/")
	if err != nil || !strings.Contains(body, "wiki") {
		t.Errorf("alice's forward: %q, %v", body, err)
	}
	a, err := apiclient.NewAdmin(info.URL, info.Fingerprint, info.AdminToken)
	if err != nil {
		t.Fatal(err)
	}
	if gs, err := a.Grants(ctx); err != nil || len(gs) != 1 || gs[0].User != "alice" {
		t.Errorf("grants while the demo runs: %+v, %v", gs, err)
	}
	a.Client().CloseIdle()

	// Ctrl-C: everything stops, the temporary directory goes, nothing is left.
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("demo returned %v after cancel", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("demo did not stop within 15s of cancel")
	}
	if _, err := os.Stat(info.Dir); !os.IsNotExist(err) {
		t.Errorf("temporary data directory %s left behind: %v", info.Dir, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline && time.Now().Before(deadline) {
		runtime.Gosched()
		<-time.After(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > baseline {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines left after the demo stopped (%d before):\n%s", n, baseline, buf[:runtime.Stack(buf, true)])
	}
}

func TestRunDemoDirMustBeNew(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/x", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := RunDemo(context.Background(), DemoConfig{Dir: dir, Listen: "127.0.0.1:0"})
	if err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("RunDemo in a used directory: %v", err)
	}
}
