// Package oidctest runs a real OpenID provider for tests: zitadel's op
// package with its example storage and login pages, on loopback, with one
// client that may use the authorization code (PKCE) and device grants, and
// a groups claim. Tests sign in "as a browser would" through the OP's own
// pages. Only tests import it.
package oidctest

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// Credentials of the OP's one client and of its users.
const (
	ClientID     = "keyhole"
	ClientSecret = "keyhole-client-secret"
	Password     = "idp password 1"
)

// OP is a running OpenID provider.
type OP struct {
	// Issuer is the OP's issuer URL (http://127.0.0.1:PORT).
	Issuer  string
	storage *opStorage
}

// SetGroups sets the groups claim of user.
func (o *OP) SetGroups(user string, groups ...string) { o.storage.setGroups(user, groups...) }

// SetAMR sets the authentication methods (the amr claim) the OP reports
// for user's code-flow logins, e.g. "pwd", "otp"; none: the example's
// "pwd".
func (o *OP) SetAMR(user string, amr ...string) {
	o.storage.mu.Lock()
	defer o.storage.mu.Unlock()
	o.storage.amr[user] = amr
}

// opUsers is the OP's user directory; IDs equal user names because the
// example device flow uses the user name as subject.
type opUsers map[string]*storage.User

func (u opUsers) GetUserByID(id string) *storage.User { return u[id] }
func (u opUsers) GetUserByUsername(name string) *storage.User {
	return u[name]
}
func (u opUsers) ExampleClientID() string { return "service" }

// opStorage is the example storage with our one client (code + device
// grants, loopback redirects on any port) and a groups claim.
type opStorage struct {
	*storage.Storage
	client opClient
	mu     sync.Mutex // guards groups and amr
	groups map[string][]string
	amr    map[string][]string
}

// AuthRequestByCode answers with the user's amr when SetAMR set one.
func (s *opStorage) AuthRequestByCode(ctx context.Context, code string) (op.AuthRequest, error) {
	ar, err := s.Storage.AuthRequestByCode(ctx, code)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if amr, ok := s.amr[ar.GetSubject()]; ok {
		return amrRequest{ar, amr}, nil
	}
	return ar, nil
}

// amrRequest is an auth request with other authentication methods.
type amrRequest struct {
	op.AuthRequest
	amr []string
}

func (r amrRequest) GetAMR() []string { return r.amr }

func (s *opStorage) GetClientByClientID(_ context.Context, id string) (op.Client, error) {
	if id != s.client.id {
		return nil, errors.New("client not found")
	}
	return s.client, nil
}

func (s *opStorage) AuthorizeClientIDSecret(_ context.Context, id, secret string) error {
	if id != s.client.id || secret != ClientSecret {
		return errors.New("invalid client")
	}
	return nil
}

func (s *opStorage) SetUserinfoFromRequest(ctx context.Context, ui *zoidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	if err := s.Storage.SetUserinfoFromRequest(ctx, ui, req, scopes); err != nil {
		return err
	}
	if slices.Contains(scopes, "groups") {
		s.mu.Lock()
		ui.AppendClaims("groups", s.groups[req.GetSubject()])
		s.mu.Unlock()
	}
	return nil
}

func (s *opStorage) setGroups(user string, groups ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.groups[user] = groups
}

// opClient is the controller's registration at the OP.
type opClient struct{ id string }

func (c opClient) GetID() string                        { return c.id }
func (c opClient) RedirectURIs() []string               { return nil }
func (c opClient) RedirectURIGlobs() []string           { return []string{"http://127.0.0.1:*/callback"} }
func (c opClient) PostLogoutRedirectURIs() []string     { return nil }
func (c opClient) PostLogoutRedirectURIGlobs() []string { return nil }
func (c opClient) ApplicationType() op.ApplicationType {
	return op.ApplicationTypeWeb
}
func (c opClient) AuthMethod() zoidc.AuthMethod { return zoidc.AuthMethodBasic }
func (c opClient) ResponseTypes() []zoidc.ResponseType {
	return []zoidc.ResponseType{zoidc.ResponseTypeCode}
}
func (c opClient) GrantTypes() []zoidc.GrantType {
	return []zoidc.GrantType{zoidc.GrantTypeCode, zoidc.GrantTypeDeviceCode}
}
func (c opClient) LoginURL(id string) string            { return "/login/username?authRequestID=" + id }
func (c opClient) AccessTokenType() op.AccessTokenType  { return op.AccessTokenTypeBearer }
func (c opClient) IDTokenLifetime() time.Duration       { return time.Hour }
func (c opClient) DevMode() bool                        { return false }
func (c opClient) IsScopeAllowed(scope string) bool     { return scope == "groups" }
func (c opClient) IDTokenUserinfoClaimsAssertion() bool { return true }
func (c opClient) ClockSkew() time.Duration             { return 0 }
func (c opClient) RestrictAdditionalIdTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
func (c opClient) RestrictAdditionalAccessTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}

// NewOP runs an OpenID provider until the test ends, with users alice, bob
// and mallory (password Password; alice in the IdP groups eng and
// idp-only) and one confidential client, clientID with ClientSecret, allowed
// the code (redirects to http://127.0.0.1:*/callback) and device grants.
func NewOP(t testing.TB, clientID string) *OP {
	t.Helper()
	l := httptest.NewUnstartedServer(nil)
	issuer := "http://" + l.Listener.Addr().String()
	users := opUsers{}
	for _, n := range []string{"alice", "bob", "mallory"} {
		users[n] = &storage.User{ID: n, Username: n, Password: Password, FirstName: n, Email: n + "@example.com", EmailVerified: true}
	}
	st := &opStorage{
		// The map only lets the example's device flow see that the client
		// exists; GetClientByClientID answers with opClient.
		Storage: storage.NewStorageWithClients(users, map[string]*storage.Client{clientID: storage.DeviceClient(clientID, ClientSecret)}),
		client:  opClient{id: clientID},
		groups:  map[string][]string{"alice": {"eng", "idp-only"}},
		amr:     map[string][]string{},
	}
	l.Config.Handler = exampleop.SetupServer(issuer, st, nil, false)
	l.Start()
	t.Cleanup(l.Close)
	return &OP{Issuer: issuer, storage: st}
}

// browser is a user agent with cookies that stops at the loopback redirect.
func browser(t testing.TB) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, Timeout: 10 * time.Second, CheckRedirect: func(req *http.Request, _ []*http.Request) error {
		if strings.HasSuffix(req.URL.Path, "/callback") && req.URL.Query().Get("code") != "" {
			return http.ErrUseLastResponse
		}
		return nil
	}}
}

// BrowserLogin opens authURL, signs in at the OP's login form as user, and
// returns the redirect to the loopback callback (code and state) without
// following it.
func BrowserLogin(t testing.TB, authURL, user string) *url.URL {
	t.Helper()
	b := browser(t)
	resp, err := b.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	id := resp.Request.URL.Query().Get("authRequestID")
	if resp.StatusCode != http.StatusOK || id == "" {
		t.Fatalf("authorize: %s at %s", resp.Status, resp.Request.URL)
	}
	form := url.Values{"id": {id}, "username": {user}, "password": {Password}}
	resp, err = b.PostForm(resp.Request.URL.Scheme+"://"+resp.Request.URL.Host+"/login/username", form)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	loc, err := resp.Location()
	if err != nil {
		t.Fatalf("login form: %s %s", resp.Status, body)
	}
	return loc
}

// ApproveDevice signs in as user at the OP's device page, enters userCode
// and allows it.
func ApproveDevice(t testing.TB, verificationURI, userCode, user string) {
	t.Helper()
	b := browser(t)
	u, err := url.Parse(verificationURI)
	if err != nil {
		t.Fatal(err)
	}
	base := u.Scheme + "://" + u.Host
	for _, step := range []struct {
		path string
		form url.Values
	}{
		{"/device/login", url.Values{"user_code": {userCode}, "username": {user}, "password": {Password}}},
		{"/device/confirm", url.Values{"action": {"allowed"}}},
	} {
		resp, err := b.PostForm(base+step.path, step.form)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || strings.Contains(string(body), "error") {
			t.Fatalf("%s: %s %s", step.path, resp.Status, body)
		}
	}
}
