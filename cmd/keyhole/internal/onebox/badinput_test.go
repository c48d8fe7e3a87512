package onebox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/client"
	"github.com/keyhole-net/keyhole/controller/auth"
	"github.com/keyhole-net/keyhole/gateway"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// rawCall sends body as-is and returns the status and decoded error.
func rawCall(t *testing.T, f *fixture, method, path, token, contentType string, body []byte) (int, api.Error) {
	t.Helper()
	cfg, err := trust.PinnedConfig(f.box.Fingerprint, "127.0.0.1", nil)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	req, _ := http.NewRequest(method, f.box.URL+path, bytes.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e api.Error
	if resp.StatusCode >= 400 {
		if err := json.Unmarshal(b, &e); err != nil || e.Code == "" || e.Message == "" {
			t.Fatalf("%s %s: status %d with a body that is not a JSON error: %q", method, path, resp.StatusCode, b)
		}
	}
	return resp.StatusCode, e
}

func TestBadInputGetsClearErrorsAndChangesNothing(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.box.AdminToken
	before := snapshot(t, f)
	huge := bytes.Repeat([]byte("a"), 1<<20)
	cases := []struct {
		name, method, path, token string
		body                      string
		raw                       []byte
		status                    int
		code                      string
	}{
		{"malformed JSON", "POST", "/v1/users", tok, `{"name":`, nil, 400, api.CodeBadRequest},
		{"trailing data", "POST", "/v1/users", tok, `{"name":"x"} {"name":"y"}`, nil, 400, api.CodeBadRequest},
		{"unknown field", "POST", "/v1/users", tok, `{"name":"x","admin":true}`, nil, 400, api.CodeBadRequest},
		{"oversized body", "POST", "/v1/users", tok, "", append(append([]byte(`{"name":"`), huge...), '"', '}'), 413, api.CodeTooLarge},
		{"unknown group", "POST", "/v1/users", tok, `{"name":"carol","groups":["nope"]}`, nil, 404, api.CodeNotFound},
		{"bad user name", "POST", "/v1/users", tok, `{"name":"bad name!"}`, nil, 400, api.CodeBadRequest},
		{"short password", "POST", "/v1/users", tok, `{"name":"carol","password":"x"}`, nil, 400, api.CodeBadRequest},
		{"duplicate user", "POST", "/v1/users", tok, `{"name":"alice"}`, nil, 409, api.CodeConflict},
		{"duplicate group", "POST", "/v1/groups", tok, `{"name":"eng"}`, nil, 409, api.CodeConflict},
		{"duplicate app", "POST", "/v1/apps", tok, `{"name":"wiki","addresses":["198.51.100.7/32"],"ports":["tcp/80"],"gateway_group":"site"}`, nil, 409, api.CodeConflict},
		{"invalid CIDR", "POST", "/v1/apps", tok, `{"name":"x","addresses":["198.51.100.300/24"],"ports":["tcp/80"],"gateway_group":"site"}`, nil, 400, api.CodeBadRequest},
		{"overlay CIDR", "POST", "/v1/apps", tok, `{"name":"x","addresses":["100.64.1.0/24"],"ports":["tcp/80"],"gateway_group":"site"}`, nil, 400, api.CodeBadRequest},
		{"invalid port range", "POST", "/v1/apps", tok, `{"name":"x","addresses":["198.51.100.7/32"],"ports":["tcp/90-80"],"gateway_group":"site"}`, nil, 400, api.CodeBadRequest},
		{"port zero", "POST", "/v1/apps", tok, `{"name":"x","addresses":["198.51.100.7/32"],"ports":["tcp/0"],"gateway_group":"site"}`, nil, 400, api.CodeBadRequest},
		{"no ports", "POST", "/v1/apps", tok, `{"name":"x","addresses":["198.51.100.7/32"],"gateway_group":"site"}`, nil, 400, api.CodeBadRequest},
		{"unknown gateway group", "POST", "/v1/apps", tok, `{"name":"x","addresses":["198.51.100.7/32"],"ports":["tcp/80"],"gateway_group":"nope"}`, nil, 404, api.CodeNotFound},
		{"bad domain", "POST", "/v1/apps", tok, `{"name":"x","domains":["not a domain"],"ports":["tcp/80"],"gateway_group":"site"}`, nil, 400, api.CodeBadRequest},
		{"policy unknown app", "POST", "/v1/policies", tok, `{"action":"allow","groups":["eng"],"apps":["nope"]}`, nil, 404, api.CodeNotFound},
		{"policy unknown user", "POST", "/v1/policies", tok, `{"action":"allow","users":["nobody"],"apps":["wiki"]}`, nil, 404, api.CodeNotFound},
		{"policy bad action", "POST", "/v1/policies", tok, `{"action":"maybe","groups":["eng"],"apps":["wiki"]}`, nil, 400, api.CodeBadRequest},
		{"delete unknown user", "DELETE", "/v1/users/nobody", tok, ``, nil, 404, api.CodeNotFound},
		{"not JSON", "POST", "/v1/groups", tok, `name=x`, nil, 415, api.CodeUnsupported},
		{"admin without token", "GET", "/v1/users", "", ``, nil, 401, api.CodeUnauthorized},
		{"admin with wrong token", "POST", "/v1/groups", "khadm_wrong", `{"name":"x"}`, nil, 401, api.CodeUnauthorized},
		{"unknown endpoint", "GET", "/v1/nope", tok, ``, nil, 404, api.CodeNotFound},
		{"metrics without token", "GET", "/metrics", "", ``, nil, 401, api.CodeUnauthorized},
		{"forged enrolment token", "POST", "/v1/gateway/enrol", "", `{"token":"khgw_forged","name":"x","csr":"` + csrJSON(t) + `","wg_public_key":"` + wgPubJSON(t) + `"}`, nil, 401, api.CodeUnauthorized},
		{"grant without device certificate", "POST", "/v1/grants", "", `{"app":"wiki"}`, nil, 401, api.CodeUnauthorized},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body := tc.raw
			if body == nil {
				body = []byte(tc.body)
			}
			ct := "application/json"
			if tc.code == api.CodeUnsupported {
				ct = "application/x-www-form-urlencoded"
			}
			status, e := rawCall(t, f, tc.method, tc.path, tc.token, ct, body)
			if status != tc.status || e.Code != tc.code {
				t.Fatalf("got %d %s (%s), want %d %s", status, e.Code, e.Message, tc.status, tc.code)
			}
		})
	}
	if status, _ := rawCall(t, f, "GET", "/metrics", tok, "", nil); status != 200 {
		t.Fatalf("metrics with the admin token: status %d", status)
	}
	if after := snapshot(t, f); after != before {
		t.Fatalf("bad input changed state:\nbefore %s\nafter  %s", before, after)
	}
}

func csrJSON(t *testing.T) string {
	k, _ := trust.NewKey()
	csr, err := trust.NewCSR(k, "x")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(csr)
	return strings.Trim(string(b), `"`)
}

func wgPubJSON(t *testing.T) string {
	k, err := key.NewWGPrivate()
	if err != nil {
		t.Fatal(err)
	}
	return k.Public().String()
}

func TestEnrolmentTokens(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	ctx := context.Background()
	enrol := func(tok string) error {
		g, err := gateway.New(gateway.Config{ControllerURL: f.box.URL, CAFingerprint: f.box.Fingerprint, Token: tok, DataDir: t.TempDir()})
		if err != nil {
			return err
		}
		rctx, cancel := context.WithCancel(ctx)
		errc := make(chan error, 1)
		go func() { errc <- g.Run(rctx) }()
		select {
		case err := <-errc:
			cancel()
			return err
		case <-g.Ready():
			cancel()
			return <-errc
		}
	}
	tok, err := f.box.Admin.GatewayToken(ctx, "site", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := enrol(tok.Token); err != nil {
		t.Fatalf("first use: %v", err)
	}
	if err := enrol(tok.Token); !apiclient.IsCode(err, api.CodeConflict) {
		t.Fatalf("re-used token: %v", err)
	}
	short, err := f.box.Admin.GatewayToken(ctx, "site", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Second, func() error {
		if time.Now().Before(short.ExpiresAt) {
			return errors.New("token not expired yet")
		}
		return nil
	})
	if err := enrol(short.Token); !apiclient.IsCode(err, api.CodeExpired) {
		t.Fatalf("expired token: %v", err)
	}
	forged, _ := auth.NewToken(auth.PrefixGateway)
	if err := enrol(forged.Reveal()); !apiclient.IsCode(err, api.CodeUnauthorized) {
		t.Fatalf("forged token: %v", err)
	}
	gws, _ := f.box.Admin.Gateways(ctx)
	if len(gws) != 2 { // the fixture's and the first enrolment above
		t.Fatalf("%d gateways enrolled, want 2", len(gws))
	}
}

func TestWrongFingerprintAndForeignCertificate(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	ctx := context.Background()
	wrong := "sha256:" + strings.Repeat("ab", 32)
	_, err := client.Login(ctx, client.LoginConfig{ControllerURL: f.box.URL, CAFingerprint: wrong, User: "alice", Password: password, DataDir: t.TempDir()})
	if !errors.Is(err, trust.ErrFingerprintMismatch) {
		t.Fatalf("wrong fingerprint: %v", err)
	}
	if _, err := client.Login(ctx, client.LoginConfig{ControllerURL: f.box.URL, CAFingerprint: f.box.Fingerprint, User: "alice", Password: "wrong password", DataDir: t.TempDir()}); !apiclient.IsCode(err, api.CodeUnauthorized) {
		t.Fatalf("wrong password: %v", err)
	}
	// Alice's session presented with bob's device certificate.
	dirA, dirB := t.TempDir(), t.TempDir()
	for _, l := range []struct{ user, dir string }{{"alice", dirA}, {"bob", dirB}} {
		if _, err := client.Login(ctx, client.LoginConfig{ControllerURL: f.box.URL, CAFingerprint: f.box.Fingerprint, User: l.user, Password: password, DataDir: l.dir}); err != nil {
			t.Fatal(err)
		}
	}
	credsB, err := trust.LoadCredentials(dirB)
	if err != nil {
		t.Fatal(err)
	}
	sessA, _ := os.ReadFile(filepath.Join(dirA, "session.token"))
	ac, err := apiclient.New(apiclient.Config{URL: f.box.URL, Credentials: credsB, Bearer: strings.TrimSpace(string(sessA))})
	if err != nil {
		t.Fatal(err)
	}
	err = ac.Do(ctx, "POST", "/v1/grants", api.GrantRequest{App: "wiki"}, nil)
	if !apiclient.IsCode(err, api.CodeUnauthorized) {
		t.Fatalf("session with another device's certificate: %v", err)
	}
	// A certificate from another CA is refused at the TLS layer or by the API.
	other := newFixture(t, fixtureOpts{})
	dirC := t.TempDir()
	if _, err := client.Login(ctx, client.LoginConfig{ControllerURL: other.box.URL, CAFingerprint: other.box.Fingerprint, User: "alice", Password: password, DataDir: dirC}); err != nil {
		t.Fatal(err)
	}
	credsC, _ := trust.LoadCredentials(dirC)
	credsC.CA = credsB.CA // trust our controller, present the foreign cert
	ac2, _ := apiclient.New(apiclient.Config{URL: f.box.URL, Credentials: credsC, Bearer: strings.TrimSpace(string(sessA))})
	if err := ac2.Do(ctx, "POST", "/v1/grants", api.GrantRequest{App: "wiki"}, nil); err == nil {
		t.Fatal("certificate from a foreign CA accepted")
	}
}

// TestBadTraversalInput: candidates and peer reports from the network are
// checked before anything uses them (issue 3).
func TestBadTraversalInput(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	ctx := context.Background()
	alice := f.login(t, "alice", false)
	creds, err := trust.LoadCredentials(alice.Dir)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := os.ReadFile(filepath.Join(alice.Dir, "session.token"))
	if err != nil {
		t.Fatal(err)
	}
	dev, err := apiclient.New(apiclient.Config{URL: f.box.URL, Credentials: creds, Bearer: strings.TrimSpace(string(sess))})
	if err != nil {
		t.Fatal(err)
	}
	gwCreds, err := trust.LoadCredentials(f.gw.Dir)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := apiclient.New(apiclient.Config{URL: f.box.URL, Credentials: gwCreds})
	if err != nil {
		t.Fatal(err)
	}
	cand := func(typ, addr string) api.Candidate {
		return api.Candidate{Type: typ, Addr: netip.MustParseAddrPort(addr)}
	}
	nine := make([]api.Candidate, 9)
	for i := range nine {
		nine[i] = cand("host", fmt.Sprintf("192.0.2.%d:51820", i+1))
	}
	for _, tc := range []struct {
		name  string
		cands []api.Candidate
	}{
		{"unknown type", []api.Candidate{cand("prflx", "192.0.2.1:1")}},
		{"port zero", []api.Candidate{cand("srflx", "192.0.2.1:0")}},
		{"unspecified", []api.Candidate{cand("host", "0.0.0.0:1")}},
		{"multicast", []api.Candidate{cand("host", "224.0.0.1:1")}},
		{"too many", nine},
	} {
		t.Run("grant "+tc.name, func(t *testing.T) {
			err := dev.Do(ctx, "POST", "/v1/grants", api.GrantRequest{App: "wiki", Candidates: tc.cands}, nil)
			if !apiclient.IsCode(err, api.CodeBadRequest) {
				t.Fatalf("grant with %s candidates: %v", tc.name, err)
			}
		})
		t.Run("hello "+tc.name, func(t *testing.T) {
			k, _ := key.NewWGPrivate()
			err := gw.Do(ctx, "POST", "/v1/gateway/hello", api.GatewayHello{WGPublicKey: k.Public(), Candidates: tc.cands}, nil)
			if !apiclient.IsCode(err, api.CodeBadRequest) {
				t.Fatalf("hello with %s candidates: %v", tc.name, err)
			}
		})
	}
	k, _ := key.NewWGPrivate()
	tooMany := make([]api.PeerReport, 201)
	for i := range tooMany {
		tooMany[i] = api.PeerReport{PublicKey: k.Public()}
	}
	for _, tc := range []struct {
		name  string
		peers []api.PeerReport
	}{
		{"no key", []api.PeerReport{{Path: api.PathDirect}}},
		{"bad path", []api.PeerReport{{PublicKey: k.Public(), Path: "sideways"}}},
		{"too many", tooMany},
	} {
		t.Run("peers "+tc.name, func(t *testing.T) {
			err := gw.Do(ctx, "POST", "/v1/gateway/peers", api.PeerReports{Peers: tc.peers}, nil)
			if !apiclient.IsCode(err, api.CodeBadRequest) && !apiclient.IsCode(err, api.CodeTooLarge) {
				t.Fatalf("peer report with %s: %v", tc.name, err)
			}
		})
	}
	// Still working: a good grant after all that.
	if _, err := alice.Grant(ctx, "wiki", "tcp", f.wiki.Port()); err != nil {
		t.Fatalf("grant after bad input: %v", err)
	}
}
