// Package apiclient is the HTTPS + JSON client every Keyhole role uses to
// talk to a controller: gateways, clients and the admin CLI. It pins the
// controller's CA by fingerprint on first contact, presents an mTLS
// certificate that can be swapped at run time (renewal), and turns error
// responses into *api.Error values callers can branch on.
package apiclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// maxResponseBytes caps a non-streaming response body.
const maxResponseBytes = 32 << 20

// Config configures a Client. URL and one of Fingerprint or Credentials are
// required.
type Config struct {
	// URL is the controller's base URL, e.g. https://127.0.0.1:8443.
	URL string
	// FallbackURLs are the base URLs of other controllers of the same
	// cluster (same CA), which Failover moves to in turn. With any, the
	// TLS server name is each URL's own host.
	FallbackURLs []string
	// Fingerprint pins the controller CA ("sha256:…") for first contact.
	Fingerprint string
	// Credentials, when set, are trusted instead of Fingerprint: their CA is
	// the only root, and their certificate is offered for mTLS.
	Credentials *trust.Credentials
	// Bearer is sent as "Authorization: Bearer …" (admin token or session).
	Bearer string
	// Timeout bounds each non-streaming request (default 15s).
	Timeout time.Duration
	// DialContext, if set, opens the TCP connections (default net.Dialer),
	// e.g. from inside another network namespace.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Client talks to one controller. Safe for concurrent use.
type Client struct {
	urls    []*url.URL // URL, then FallbackURLs
	cur     atomic.Int32
	hc      *http.Client
	stream  *http.Client // no overall timeout, for long-lived streams
	bearer  atomic.Pointer[string]
	cert    atomic.Pointer[tls.Certificate]
	timeout time.Duration
	tr      *swapTransport
}

// swapTransport lets Reconnect replace the connection pool under the
// http.Clients in use.
type swapTransport struct {
	cur atomic.Pointer[http.Transport]
}

func (t *swapTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return t.cur.Load().RoundTrip(r)
}

// New returns a client; it does not connect.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("controller URL %q: want https://HOST:PORT", cfg.URL)
	}
	host := u.Hostname()
	c := &Client{urls: []*url.URL{u}, timeout: cfg.Timeout}
	for _, s := range cfg.FallbackURLs {
		f, err := url.Parse(s)
		if err != nil || f.Scheme != "https" || f.Host == "" {
			return nil, fmt.Errorf("controller URL %q: want https://HOST:PORT", s)
		}
		c.urls = append(c.urls, f)
	}
	if c.timeout <= 0 {
		c.timeout = 15 * time.Second
	}
	b := cfg.Bearer
	c.bearer.Store(&b)
	var tlsCfg *tls.Config
	switch {
	case cfg.Credentials != nil:
		tlsCfg = cfg.Credentials.TLSConfig(host)
		c.SetCredentials(cfg.Credentials)
		tlsCfg.GetClientCertificate = c.clientCert
	case cfg.Fingerprint != "":
		if tlsCfg, err = trust.PinnedConfig(cfg.Fingerprint, host, nil); err != nil {
			return nil, err
		}
	default:
		return nil, errors.New("apiclient: need the controller's CA fingerprint (--ca-fingerprint) or saved credentials")
	}
	dial := cfg.DialContext
	if dial == nil {
		dial = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	tr := &http.Transport{
		TLSClientConfig:     tlsCfg,
		ForceAttemptHTTP2:   true,
		DialContext:         dial,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		// A connection whose path died (the laptop moved, a NAT forgot
		// it) is noticed by a ping within 20 s instead of never.
		HTTP2: &http.HTTP2Config{SendPingTimeout: 15 * time.Second, PingTimeout: 5 * time.Second},
	}
	if len(c.urls) > 1 && tlsCfg.ServerName == host {
		// net/http verifies each connection against its own URL's host.
		tlsCfg.ServerName = ""
	}
	c.tr = &swapTransport{}
	c.tr.cur.Store(tr)
	c.hc = &http.Client{Transport: c.tr, Timeout: c.timeout}
	c.stream = &http.Client{Transport: c.tr}
	return c, nil
}

// SetCredentials swaps the mTLS certificate used for new connections.
func (c *Client) SetCredentials(cr *trust.Credentials) {
	c.cert.Store(&tls.Certificate{Certificate: [][]byte{cr.Cert.Raw}, PrivateKey: cr.Key, Leaf: cr.Cert})
}

// SetBearer swaps the bearer token.
func (c *Client) SetBearer(b string) { c.bearer.Store(&b) }

func (c *Client) clientCert(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	if p := c.cert.Load(); p != nil {
		return p, nil
	}
	return &tls.Certificate{}, nil
}

// CloseIdle closes idle connections (after a certificate swap, say).
func (c *Client) CloseIdle() { c.tr.cur.Load().CloseIdleConnections() }

// Reconnect makes every later request use new connections, for when the
// old ones may be dead without knowing it (our address changed). Requests
// in flight on old connections end when those do (a ping notices within
// 20 s).
func (c *Client) Reconnect() {
	old := c.tr.cur.Swap(c.tr.cur.Load().Clone())
	old.CloseIdleConnections()
}

// base returns the current controller's base URL.
func (c *Client) base() *url.URL { return c.urls[c.cur.Load()] }

// URL returns the controller's base URL.
func (c *Client) URL() string { return c.base().String() }

// Host returns the controller's host name, as TLS verifies it.
func (c *Client) Host() string { return c.base().Hostname() }

// Failover moves later requests to the next of the controllers (URL, then
// FallbackURLs, round and round) and returns its URL. Without fallbacks it
// changes nothing.
func (c *Client) Failover() string {
	for {
		old := c.cur.Load()
		next := (old + 1) % int32(len(c.urls))
		if c.cur.CompareAndSwap(old, next) {
			return c.urls[next].String()
		}
	}
}

func (c *Client) newRequest(ctx context.Context, method, path string, in any) (*http.Request, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("encode %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	p, q, _ := strings.Cut(path, "?")
	u := c.base().ResolveReference(&url.URL{Path: p, RawQuery: q})
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if b := *c.bearer.Load(); b != "" {
		req.Header.Set("Authorization", "Bearer "+b)
	}
	return req, nil
}

// Do sends in (JSON, nil for none) and decodes the answer into out (nil to
// discard). A non-2xx answer is returned as *api.Error.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	req, err := c.newRequest(ctx, method, path, in)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, describe(err))
	}
	defer resp.Body.Close()
	return decodeResponse(resp, out)
}

// Stream opens a long-lived GET and returns the response; the caller reads
// and closes the body. Cancel ctx to end it.
func (c *Client) Stream(ctx context.Context, path string) (*http.Response, error) {
	req, err := c.newRequest(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.stream.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, describe(err))
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, decodeResponse(resp, nil)
	}
	return resp, nil
}

// ConnectionState makes one request to /v1/health and returns the TLS
// state, so a caller can save the pinned CA after first contact.
func (c *Client) ConnectionState(ctx context.Context) (tls.ConnectionState, error) {
	req, err := c.newRequest(ctx, http.MethodGet, "/v1/health", nil)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return tls.ConnectionState{}, fmt.Errorf("contact controller: %w", describe(err))
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	if resp.TLS == nil {
		return tls.ConnectionState{}, errors.New("contact controller: no TLS")
	}
	return *resp.TLS, nil
}

func decodeResponse(resp *http.Response, out any) error {
	body := io.LimitReader(resp.Body, maxResponseBytes)
	if resp.StatusCode/100 != 2 {
		var e api.Error
		b, _ := io.ReadAll(body)
		if json.Unmarshal(b, &e) != nil || e.Code == "" {
			return &api.Error{Code: "http_" + fmt.Sprint(resp.StatusCode), Message: strings.TrimSpace(string(b))}
		}
		return &e
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		_, _ = io.Copy(io.Discard, body)
		return nil
	}
	if err := json.NewDecoder(body).Decode(out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	return nil
}

// describe turns the common TLS failures into advice.
func describe(err error) error {
	if errors.Is(err, trust.ErrFingerprintMismatch) {
		return fmt.Errorf("%w: check --ca-fingerprint against what the controller printed", err)
	}
	return err
}

// IsCode reports whether err is an *api.Error with the given code.
func IsCode(err error, code string) bool {
	var e *api.Error
	return errors.As(err, &e) && e.Code == code
}
