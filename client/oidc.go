package client

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/oauth2"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// OIDCLoginConfig is what keyhole login --oidc needs. The client never sees
// an IdP token: the controller talks to the IdP and answers, as for a
// password login, with a session and the device certificate.
type OIDCLoginConfig struct {
	ControllerURL string
	// ControllerFallbacks: see LoginConfig.
	ControllerFallbacks []string
	CAFingerprint       string
	DeviceName          string
	DataDir             string
	// Browser selects the authorization code flow with PKCE and a loopback
	// redirect (RFC 8252); otherwise the device authorization grant
	// (RFC 8628) is used.
	Browser bool
	// ShowDevice shows the user where to go and which code to enter
	// (device flow). Required for it.
	ShowDevice func(api.OIDCDeviceStart)
	// OpenURL sends the user's browser to the IdP (code flow): open it, or
	// print it. Required for it.
	OpenURL func(authURL string) error
}

// loginKeys are the fresh device key, CSR and WireGuard key of a login, and
// the pinned controller connection it goes through.
type loginKeys struct {
	pinned *apiclient.Client
	caCert *x509.Certificate
	key    *trust.Credentials // Key only, until the controller signs
	wgKey  key.WGPrivate
	device api.LoginDevice
}

// newLoginKeys pins the controller, makes a fresh device key (the old one
// stops working) and WireGuard key, and re-uses the device of dir's
// previous login at the same controller when reuse says so.
func newLoginKeys(ctx context.Context, controllerURL, fingerprint, dir, deviceName string, reuse func(*Profile) bool) (*loginKeys, error) {
	if deviceName == "" {
		deviceName, _ = os.Hostname()
	}
	pinned, err := apiclient.New(apiclient.Config{URL: controllerURL, Fingerprint: fingerprint})
	if err != nil {
		return nil, err
	}
	cs, err := pinned.ConnectionState(ctx)
	if err != nil {
		return nil, err
	}
	caCert, err := trust.CAFromChain(cs, fingerprint)
	if err != nil {
		return nil, err
	}
	lk := &loginKeys{pinned: pinned, caCert: caCert, device: api.LoginDevice{DeviceName: deviceName}}
	if old, err := LoadProfile(dir); err == nil && old.ControllerURL == controllerURL && reuse(old) {
		if creds, err := trust.LoadCredentials(dir); err == nil && creds.Fingerprint() == trust.Fingerprint(caCert) {
			lk.device.DeviceID = old.DeviceID
		}
	}
	k, err := trust.NewKey()
	if err != nil {
		return nil, err
	}
	if lk.device.CSR, err = trust.NewCSR(k, deviceName); err != nil {
		return nil, err
	}
	if lk.wgKey, err = key.NewWGPrivate(); err != nil {
		return nil, err
	}
	lk.device.WGPublicKey = lk.wgKey.Public()
	lk.key = &trust.Credentials{Key: k}
	return lk, nil
}

// save stores the device identity and session of a successful login in dir.
func (lk *loginKeys) save(controllerURL string, fallbacks []string, dir string, resp api.LoginResponse) (*Profile, error) {
	cert, err := trust.ParseCertPEM(resp.Certificate)
	if err != nil {
		return nil, err
	}
	creds := &trust.Credentials{Key: lk.key.Key, Cert: cert, CA: lk.caCert}
	if err := creds.Save(dir); err != nil {
		return nil, err
	}
	if err := trust.WriteSecret(filepath.Join(dir, fileWGKey), []byte(lk.wgKey.Base64Secret()+"\n")); err != nil {
		return nil, err
	}
	if err := trust.WriteSecret(filepath.Join(dir, fileSession), []byte(resp.Session+"\n")); err != nil {
		return nil, err
	}
	p := &Profile{ControllerURL: controllerURL, ControllerFallbacks: fallbacks, User: resp.User, DeviceID: resp.DeviceID, OverlayIP: resp.OverlayIP, SessionExpiresAt: resp.SessionExpiresAt, STUN: resp.STUN}
	b, _ := json.MarshalIndent(p, "", "  ")
	if err := trust.WriteSecret(filepath.Join(dir, fileProfile), b); err != nil {
		return nil, err
	}
	return p, nil
}

// LoginOIDC logs in through the controller's OpenID Connect provider and
// saves the device identity and session in DataDir, as Login does.
func LoginOIDC(ctx context.Context, cfg OIDCLoginConfig) (*Profile, error) {
	if cfg.ControllerURL == "" || cfg.CAFingerprint == "" {
		return nil, errors.New("login: --controller and --ca-fingerprint are required")
	}
	// The user is known only after the IdP login: offer the previous
	// device; the controller enrols a new one if it is another user's.
	lk, err := newLoginKeys(ctx, cfg.ControllerURL, cfg.CAFingerprint, cfg.DataDir, cfg.DeviceName, func(*Profile) bool { return true })
	if err != nil {
		return nil, fmt.Errorf("login: %w", err)
	}
	var resp api.LoginResponse
	if cfg.Browser {
		resp, err = lk.codeFlow(ctx, cfg.OpenURL)
	} else {
		resp, err = lk.deviceFlow(ctx, cfg.ShowDevice)
	}
	if err != nil {
		return nil, fmt.Errorf("login: %w", err)
	}
	p, err := lk.save(cfg.ControllerURL, cfg.ControllerFallbacks, cfg.DataDir, resp)
	if err != nil {
		return nil, fmt.Errorf("login: %w", err)
	}
	return p, nil
}

// deviceFlow starts a device authorization at the controller, shows the
// code, and polls until the user approved at the IdP.
func (lk *loginKeys) deviceFlow(ctx context.Context, show func(api.OIDCDeviceStart)) (api.LoginResponse, error) {
	var start api.OIDCDeviceStart
	if err := lk.pinned.Do(ctx, "POST", "/v1/login/oidc/device", nil, &start); err != nil {
		return api.LoginResponse{}, err
	}
	if show != nil {
		show(start)
	}
	interval := max(time.Duration(start.Interval), time.Second)
	ctx, cancel := context.WithDeadline(ctx, start.ExpiresAt.Add(interval))
	defer cancel()
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return api.LoginResponse{}, errors.New("the code expired before it was approved; run keyhole login --oidc again")
			}
			return api.LoginResponse{}, ctx.Err()
		case <-t.C:
		}
		var resp api.LoginResponse
		err := lk.pinned.Do(ctx, "POST", "/v1/login/oidc/device/poll", api.OIDCDevicePoll{Handle: start.Handle, LoginDevice: lk.device}, &resp)
		if !apiclient.IsCode(err, api.CodeAuthorizationPending) {
			return resp, err
		}
		t.Reset(interval)
	}
}

// codeFlow runs the authorization code flow with PKCE: a listener on
// 127.0.0.1 receives the IdP's redirect; the verifier stays here until the
// finish call.
func (lk *loginKeys) codeFlow(ctx context.Context, open func(string) error) (api.LoginResponse, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return api.LoginResponse{}, fmt.Errorf("loopback listener for the browser redirect: %w", err)
	}
	defer ln.Close()
	verifier := oauth2.GenerateVerifier()
	var start api.OIDCAuth
	if err := lk.pinned.Do(ctx, "POST", "/v1/login/oidc/auth", api.OIDCAuthStart{
		RedirectURI:   "http://" + ln.Addr().String() + "/callback",
		CodeChallenge: oauth2.S256ChallengeFromVerifier(verifier),
	}, &start); err != nil {
		return api.LoginResponse{}, err
	}
	type result struct {
		code string
		err  error
	}
	results := make(chan result, 1)
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/callback" {
			http.NotFound(w, r)
			return
		}
		q := r.URL.Query()
		var res result
		switch {
		case q.Get("state") != start.State:
			// Not our login (a stale tab, or a forged redirect): refuse
			// and keep waiting for the real one.
			http.Error(w, "This sign-in does not belong to the keyhole login waiting here.", http.StatusBadRequest)
			return
		case q.Get("error") != "":
			res.err = fmt.Errorf("the identity provider refused the login: %s %s", q.Get("error"), q.Get("error_description"))
		case q.Get("code") == "":
			res.err = errors.New("the identity provider redirected without a code")
		default:
			res.code = q.Get("code")
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if res.err != nil {
			fmt.Fprintf(w, "<p>Sign-in failed: %s</p>", html.EscapeString(res.err.Error()))
		} else {
			fmt.Fprint(w, "<p>Signed in. You can close this window and return to the terminal.</p>")
		}
		select {
		case results <- res:
		default:
		}
	})}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	defer func() { srv.Close(); <-served }()
	if err := open(start.AuthURL); err != nil {
		return api.LoginResponse{}, err
	}
	ctx, cancel := context.WithDeadline(ctx, start.ExpiresAt)
	defer cancel()
	var res result
	select {
	case res = <-results:
	case <-ctx.Done():
		return api.LoginResponse{}, fmt.Errorf("no sign-in arrived from the browser: %w", ctx.Err())
	}
	if res.err != nil {
		return api.LoginResponse{}, res.err
	}
	var resp api.LoginResponse
	err = lk.pinned.Do(ctx, "POST", "/v1/login/oidc/auth/finish", api.OIDCAuthFinish{
		Handle: start.Handle, Code: res.code, State: start.State, CodeVerifier: verifier, LoginDevice: lk.device,
	}, &resp)
	return resp, err
}
