package api

import (
	"time"

	"github.com/keyhole-net/keyhole/internal/key"
)

// Single sign-on with an OpenID Connect provider (the controller is the
// relying party; the client never sees an IdP token). Two flows end in the
// same LoginResponse as the password login:
//
//   - device authorization (RFC 8628): POST /v1/login/oidc/device, show the
//     user the verification URI and code, then POST /v1/login/oidc/device/poll
//     until the user has approved;
//   - authorization code + PKCE with a loopback redirect: POST
//     /v1/login/oidc/auth with the redirect URI and the S256 challenge, send
//     the browser to AuthURL, then POST /v1/login/oidc/auth/finish with the
//     code, state and verifier the redirect delivered.

// CodeAuthorizationPending answers a device poll while the user has not yet
// approved (400, with Retry-After: poll again no sooner).
const CodeAuthorizationPending = "authorization_pending"

// LoginDevice is the device part of a login (LoginRequest carries the same
// fields for the password login).
type LoginDevice struct {
	// DeviceID re-uses an existing device of the user; empty enrols a new one.
	DeviceID    DeviceID     `json:"device_id,omitempty"`
	DeviceName  string       `json:"device_name"`
	CSR         string       `json:"csr"` // PEM, ECDSA P-256, signed by the device key
	WGPublicKey key.WGPublic `json:"wg_public_key"`
}

// OIDCDeviceStart answers POST /v1/login/oidc/device (no body).
type OIDCDeviceStart struct {
	// Handle names this login in the poll. It is a secret: whoever holds it
	// can finish the login once the user approved.
	Handle string `json:"handle"`
	// VerificationURI is where the user goes to enter UserCode;
	// VerificationURIComplete, when the IdP gives one, carries the code.
	VerificationURI         string    `json:"verification_uri"`
	VerificationURIComplete string    `json:"verification_uri_complete,omitempty"`
	UserCode                string    `json:"user_code"`
	ExpiresAt               time.Time `json:"expires_at"`
	// Interval is how often to poll.
	Interval Duration `json:"interval"` // "5s"
}

// OIDCDevicePoll is the body of POST /v1/login/oidc/device/poll. The answer
// is a LoginResponse once the user approved, CodeAuthorizationPending before.
type OIDCDevicePoll struct {
	Handle string `json:"handle"`
	LoginDevice
}

// OIDCAuthStart is the body of POST /v1/login/oidc/auth.
type OIDCAuthStart struct {
	// RedirectURI is the client's loopback listener,
	// http://127.0.0.1:PORT/PATH (RFC 8252 §7.3).
	RedirectURI string `json:"redirect_uri"`
	// CodeChallenge is the PKCE S256 challenge of a verifier only the
	// client knows until it finishes.
	CodeChallenge string `json:"code_challenge"`
}

// OIDCAuth answers POST /v1/login/oidc/auth.
type OIDCAuth struct {
	// Handle names this login in the finish call (a secret, as above).
	Handle string `json:"handle"`
	// AuthURL is the IdP's authorization URL for the browser.
	AuthURL string `json:"auth_url"`
	// State is what the redirect must carry back.
	State     string    `json:"state"`
	ExpiresAt time.Time `json:"expires_at"`
}

// OIDCAuthFinish is the body of POST /v1/login/oidc/auth/finish; the answer
// is a LoginResponse.
type OIDCAuthFinish struct {
	Handle       string `json:"handle"`
	Code         string `json:"code"`
	State        string `json:"state"`
	CodeVerifier string `json:"code_verifier"`
	LoginDevice
}
