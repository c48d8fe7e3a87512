package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
)

var forwardingRE = regexp.MustCompile(`Forwarding (127\.0\.0\.1:\d+) → (\S+) \(grant (grt_\w+) until`)

// httpGet fetches url directly (the forward is a plain local port).
func httpGet(url string) (string, error) {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestLoginConnectStatusLogout(t *testing.T) {
	isolate(t)
	s := newSystem(t)
	dir := t.TempDir()
	login := []string{"login", "--controller", s.box.URL, "--ca-fingerprint", s.box.Fingerprint, "--user", "alice", "--password-stdin", "--data", dir}

	r := keyhole(t, "wrong password\n", login...)
	if r.code != 1 || !strings.HasPrefix(r.stderr, "keyhole: ") {
		t.Errorf("wrong password: exit %d, stderr %q", r.code, r.stderr)
	}
	r = keyhole(t, "", "login", "--controller", s.box.URL, "--ca-fingerprint", s.box.Fingerprint, "--user", "alice", "--data", dir)
	if r.code != 1 || !strings.Contains(r.stderr, "--password-stdin") {
		t.Errorf("no terminal, no --password-stdin: exit %d, stderr %q", r.code, r.stderr)
	}

	out := mustRun(t, testPassword+"\n", login...)
	for _, want := range []string{"Logged in as alice", "Device:     dev_", "Overlay IP: 100."} {
		if !strings.Contains(out, want) {
			t.Errorf("login output lacks %q:\n%s", want, out)
		}
	}
	st := decodeJSON[statusReport](t, mustRun(t, "", "status", "--json", "--data", dir))
	if !st.LoggedIn || st.Running || st.Profile == nil || st.Profile.User != "alice" || st.CertificateExpiresAt.IsZero() {
		t.Errorf("status before connect: %+v", st)
	}

	// keyhole connect wiki.corp.internal:PORT, then curl through it.
	target := fmt.Sprintf("wiki.corp.internal:%d", s.wiki.Port())
	conn := start(t, "connect", target, "--listen", "127.0.0.1:0", "--data", dir)
	var m []string
	waitFor(t, 10*time.Second, func() string {
		if code, done := conn.exited(); done {
			t.Fatalf("connect exited %d: %s", code, conn.err)
		}
		if m = forwardingRE.FindStringSubmatch(conn.out.String()); m == nil {
			return "no Forwarding line yet: " + conn.out.String()
		}
		return ""
	})
	if m[2] != target {
		t.Errorf("forwarding to %q, want %q", m[2], target)
	}
	body, err := httpGet("http://" + m[1] + "/")
	if err != nil || !strings.Contains(body, "Hello from the private app wiki") {
		t.Fatalf("through the forward: %q, %v", body, err)
	}

	// status sees the running client, its grant and its gateway peer.
	waitFor(t, 10*time.Second, func() string {
		st = decodeJSON[statusReport](t, mustRun(t, "", "status", "--json", "--data", dir))
		if !st.Running || len(st.Client.Grants) != 1 || len(st.Client.Peers) != 1 || st.Client.Peers[0].LastHandshake.IsZero() {
			return fmt.Sprintf("status: %+v", st)
		}
		return ""
	})
	if g := st.Client.Grants[0]; g.App != "wiki" || string(g.ID) != m[3] {
		t.Errorf("grant in status: %+v, want wiki %s", g, m[3])
	}
	table := mustRun(t, "", "status", "--data", dir)
	for _, want := range []string{"User:         alice", "Client:       running", "GRANT", m[3], "LAST HANDSHAKE"} {
		if !strings.Contains(table, want) {
			t.Errorf("status table lacks %q:\n%s", want, table)
		}
	}

	if code := conn.stop(t); code != 0 {
		t.Errorf("connect exited %d after cancel: %s", code, conn.err)
	}
	// The stopped client released its grant at the controller.
	waitFor(t, 5*time.Second, func() string {
		if gs, err := s.box.Admin.Grants(t.Context()); err != nil || len(gs) != 0 {
			return fmt.Sprintf("grants after connect stopped: %+v %v", gs, err)
		}
		return ""
	})

	mustRun(t, "", "logout", "--data", dir)
	st = decodeJSON[statusReport](t, mustRun(t, "", "status", "--json", "--data", dir))
	if st.LoggedIn || st.Running {
		t.Errorf("status after logout: %+v", st)
	}
	r = keyhole(t, "", "connect", target, "--data", dir)
	if r.code != 1 || !strings.Contains(r.stderr, "login") {
		t.Errorf("connect after logout: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestConnectDenied(t *testing.T) {
	isolate(t)
	s := newSystem(t)
	dir := t.TempDir()
	mustRun(t, testPassword+"\n", "login", "--controller", s.box.URL, "--ca-fingerprint", s.box.Fingerprint, "--user", "bob", "--password-stdin", "--data", dir)
	r := keyhole(t, "", "connect", "wiki", "--listen", "127.0.0.1:0", "--data", dir)
	if r.code != 1 || !strings.HasPrefix(r.stderr, "keyhole: wiki: access denied: ") || !strings.Contains(r.stderr, `no policy rule allows user "bob"`) {
		t.Errorf("denied connect: exit %d, stderr %q", r.code, r.stderr)
	}
	r = keyhole(t, "", "connect", "payroll", "--data", dir)
	if r.code != 1 || !strings.HasPrefix(r.stderr, "keyhole: ") {
		t.Errorf("unknown app: exit %d, stderr %q", r.code, r.stderr)
	}
	r = keyhole(t, "", "connect", "wiki:http", "--data", dir)
	if r.code != 1 || !strings.Contains(r.stderr, "port must be") {
		t.Errorf("bad target: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestUpSOCKS(t *testing.T) {
	isolate(t)
	s := newSystem(t)
	dir := t.TempDir()
	mustRun(t, testPassword+"\n", "login", "--controller", s.box.URL, "--ca-fingerprint", s.box.Fingerprint, "--user", "alice", "--password-stdin", "--data", dir)
	up := start(t, "up", "--socks5", "127.0.0.1:0", "--data", dir)
	re := regexp.MustCompile(`SOCKS5 proxy on (127\.0\.0\.1:\d+)`)
	var m []string
	waitFor(t, 10*time.Second, func() string {
		if code, done := up.exited(); done {
			t.Fatalf("up exited %d: %s", code, up.err)
		}
		if m = re.FindStringSubmatch(up.out.String()); m == nil {
			return "no proxy line yet: " + up.out.String()
		}
		return ""
	})
	proxy := &http.Transport{DisableKeepAlives: true, Proxy: http.ProxyURL(mustURL(t, "socks5h://"+m[1]))}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: proxy}
	resp, err := hc.Get(fmt.Sprintf("http://wiki.corp.internal:%d/", s.wiki.Port()))
	if err != nil {
		t.Fatalf("through SOCKS5: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "wiki") {
		t.Errorf("through SOCKS5: %q", b)
	}
	if code := up.stop(t); code != 0 {
		t.Errorf("up exited %d: %s", code, up.err)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
