// Package api is the Keyhole wire protocol in one place: every request,
// response and stream event exchanged between the controller, gateways,
// clients and admin tools, as plain Go types with JSON tags.
//
// All endpoints are HTTPS + JSON under /v1/. Times are UTC. Errors are an
// [Error] body with a matching HTTP status. This package holds no logic
// beyond parsing and printing of its own value types; validation that needs
// state lives in the controller.
//
// # Version history
//
//   - 1 (2026-11-23): users, groups, apps, gateway groups, gateways, policy
//     rules, devices, grants with push-and-ack to gateways, audit events and
//     flow records.
//   - 2 (2026-11-23): NAT traversal. Candidates (host, server-reflexive,
//     relayed) travel in hellos, grant requests, grants and stream events;
//     connectivity-check keys per grant; TURN relay credentials for
//     gateways; per-peer path reports from gateways.
//
// Later additions that a peer may ignore (optional fields, new endpoints and
// error codes) keep the version number:
//
//   - wildcard domain apps ("*.corp.internal") and Grant.Name; the device
//     endpoints GET /v1/device/domains (DeviceDomains) and
//     GET /v1/device/events (DeviceEvent); error codes rate_limited and
//     limit_reached.
//   - exports for stock WireGuard clients: POST /v1/exports (ExportRequest,
//     ExportResponse) and Grant.Export.
//   - local MFA (TOTP): POST /v1/mfa/enrol (MFAEnrolment),
//     POST /v1/mfa/confirm (MFAConfirm, MFAConfirmation),
//     DELETE /v1/users/{name}/mfa, LoginRequest.MFACode, User.MFA; error
//     codes mfa_required and mfa_invalid; POST /v1/login answers 429
//     rate_limited after repeated failures.
//   - policy conditions (RuleConditions in PolicyRule and PolicyRuleCreate:
//     mfa_within, time_window, source_cidrs, device_approved),
//     Error.Unmet, Device.Approved and DeviceUpdate.Approved, and
//     GET /v1/why (Why).
//   - device posture: GrantRequest.Posture and GrantRenewal.Posture
//     (SignedPosture), POST /v1/device/posture, GET
//     /v1/device/posture/checks (PostureChecks), posture profiles
//     (PostureProfile: GET/POST /v1/posture, DELETE /v1/posture/{name}),
//     RuleConditions.Posture, Device.Posture; the device event
//     posture.changed.
//   - key rotation: POST /v1/device/rotate (KeyRotation).
//   - gateway groups with failover: Gateway.Draining, PATCH
//     /v1/gateways/{id} (GatewayUpdate); the device event grant.moved
//     (DeviceEvent.NewGrantID); a renewal may answer with a different
//     grant (GrantResponse.Grant.ID) through another gateway.
package api

import (
	"net/netip"
	"time"

	"github.com/keyhole-net/keyhole/internal/key"
)

// Version is the protocol version this package describes. It changes when a
// message gains a field a peer must understand.
const Version = 2

// Typed identifiers: an ID of one kind cannot be passed where another is meant.
type (
	// UserID identifies a user ("usr_…").
	UserID string
	// DeviceID identifies a client device ("dev_…").
	DeviceID string
	// AppID identifies an app segment ("app_…").
	AppID string
	// GatewayID identifies a gateway ("gw_…").
	GatewayID string
	// GrantID identifies a grant ("grt_…").
	GrantID string
	// RuleID identifies a policy rule ("rule_…").
	RuleID string
)

// Action is what a policy rule does when it matches.
type Action string

// Policy actions.
const (
	Allow Action = "allow"
	Deny  Action = "deny"
)

// Error is the body of every non-2xx response.
type Error struct {
	// Code is a stable, machine-readable error class (see the Code* constants).
	Code string `json:"code"`
	// Message says what went wrong and what to do about it.
	Message string `json:"message"`
	// Rule is the policy rule that decided a denial ("" for the default deny).
	Rule RuleID `json:"rule,omitempty"`
	// Unmet names the rule conditions a policy denial asks for
	// (CondMFAWithin, …): a client can act on them, e.g. log in again with
	// MFA for CondMFAWithin.
	Unmet []string `json:"unmet,omitempty"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Error codes.
const (
	CodeBadRequest   = "bad_request"   // 400: malformed or invalid input
	CodeUnauthorized = "unauthorized"  // 401: no or bad credentials
	CodeForbidden    = "forbidden"     // 403: credentials fine, not allowed to do this
	CodeDenied       = "denied"        // 403: policy denied the access request
	CodeNotFound     = "not_found"     // 404
	CodeConflict     = "conflict"      // 409: duplicate name, re-used token
	CodeTooLarge     = "too_large"     // 413: body over the limit
	CodeUnavailable  = "unavailable"   // 503: no healthy gateway, retry later
	CodeInternal     = "internal"      // 500
	CodeExpired      = "expired"       // 401/410: token, session or grant expired
	CodeUnsupported  = "unsupported"   // 415: not JSON
	CodeMethod       = "bad_method"    // 405
	CodeGatewayError = "gateway_error" // 502: the gateway did not take the grant
	CodeRateLimited  = "rate_limited"  // 429: too many requests of this kind; see Retry-After
	CodeLimitReached = "limit_reached" // 409: a fixed cap was reached; an admin must make room
	CodeMFARequired  = "mfa_required"  // 401: password right; the user has MFA, send LoginRequest.MFACode
	CodeMFAInvalid   = "mfa_invalid"   // 401 (login), 400 (confirm): wrong, used or expired MFA code
	// CodePostureRefused (403): the request's posture report was not
	// accepted (bad signature, another device's, stale, older than the
	// latest); the message says why. A client may collect a fresh report
	// and retry once.
	CodePostureRefused = "posture_refused"
)

// Health is the answer of GET /v1/health (no authentication).
type Health struct {
	Version       int    `json:"version"`
	ControllerID  string `json:"controller_id"`
	CAFingerprint string `json:"ca_fingerprint"`
}

// --- Admin objects ---------------------------------------------------------

// User is a person who can log in. POST /v1/users creates one (UserCreate),
// GET /v1/users lists them, PATCH /v1/users/{name} (UserUpdate) changes one,
// DELETE /v1/users/{name} removes one (and revokes its devices' grants).
type User struct {
	ID        UserID    `json:"id"`
	Name      string    `json:"name"`
	Groups    []string  `json:"groups"`
	Disabled  bool      `json:"disabled"`
	CreatedAt time.Time `json:"created_at"`
	// MFA says the user has a confirmed TOTP enrolment: logins need a code.
	MFA bool `json:"mfa"`
}

// UserCreate is the body of POST /v1/users.
type UserCreate struct {
	Name string `json:"name"`
	// Password is the initial password; empty means the user cannot log in
	// with a password until one is set.
	Password string   `json:"password,omitempty"`
	Groups   []string `json:"groups,omitempty"`
}

// UserUpdate is the body of PATCH /v1/users/{name}. Nil fields are unchanged.
type UserUpdate struct {
	Disabled *bool     `json:"disabled,omitempty"`
	Password *string   `json:"password,omitempty"`
	Groups   *[]string `json:"groups,omitempty"`
}

// Group is a named set of users (POST/GET /v1/groups).
type Group struct {
	Name      string    `json:"name"`
	Members   int       `json:"members"`
	CreatedAt time.Time `json:"created_at,omitzero"`
}

// App is an app segment: what a grant gives access to.
// POST /v1/apps creates one (AppCreate); GET /v1/apps; DELETE /v1/apps/{name}.
type App struct {
	ID   AppID  `json:"id"`
	Name string `json:"name"`
	// Addresses are real IPs/prefixes on the gateway's site; clients route
	// them as they are.
	Addresses []netip.Prefix `json:"addresses,omitempty"`
	// Domains are exact names ("wiki.corp.internal") and wildcard patterns
	// ("*.corp.internal": every name under corp.internal, not corp.internal
	// itself). Each exact name gets a stable overlay virtual IP
	// (VirtualIPs); each name under a wildcard gets its own the first time a
	// grant asks for it. The gateway resolves the name on its site.
	Domains []string `json:"domains,omitempty"`
	// VirtualIPs maps each exact domain to its virtual IP. Names under a
	// wildcard are not listed (they are made on demand, see Grant.Name).
	VirtualIPs   map[string]netip.Addr `json:"virtual_ips,omitempty"`
	Ports        []PortRange           `json:"ports"`
	GatewayGroup string                `json:"gateway_group"`
	CreatedAt    time.Time             `json:"created_at"`
}

// AppCreate is the body of POST /v1/apps. At least one address or domain and
// at least one port range are required.
type AppCreate struct {
	Name      string         `json:"name"`
	Addresses []netip.Prefix `json:"addresses,omitempty"`
	// Domains are lowercase exact names and wildcard patterns ("*." and at
	// least two labels); each belongs to at most one app.
	Domains      []string    `json:"domains,omitempty"`
	Ports        []PortRange `json:"ports"`
	GatewayGroup string      `json:"gateway_group"`
}

// GatewayGroup is a set of gateways that serve the same apps.
type GatewayGroup struct {
	Name      string    `json:"name"`
	Gateways  int       `json:"gateways"`
	CreatedAt time.Time `json:"created_at,omitzero"`
}

// GatewayTokenCreate is the body of POST /v1/gateway-tokens.
type GatewayTokenCreate struct {
	Group string `json:"group"`
	// TTL is how long the token can be used; 0 means the controller default (1h).
	TTL Duration `json:"ttl,omitempty"`
}

// GatewayToken is a one-time enrolment token. Token is shown exactly once.
type GatewayToken struct {
	Token     string    `json:"token"`
	Group     string    `json:"group"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Gateway is an enrolled connector (GET /v1/gateways).
type Gateway struct {
	ID          GatewayID        `json:"id"`
	Name        string           `json:"name"`
	Group       string           `json:"group"`
	WGPublicKey key.WGPublic     `json:"wg_public_key"`
	OverlayIP   netip.Addr       `json:"overlay_ip"`
	Endpoints   []netip.AddrPort `json:"endpoints,omitempty"`
	// Candidates and Peers are what a connected gateway last reported.
	Candidates []Candidate  `json:"candidates,omitempty"`
	Peers      []PeerReport `json:"peers,omitempty"`
	Connected  bool         `json:"connected"`
	// Draining says an admin is taking the gateway out of service: it
	// gets no new grants, its grants keep working until they end, and
	// their renewals move to another gateway of the group.
	Draining  bool      `json:"draining"`
	LastSeen  time.Time `json:"last_seen,omitzero"`
	CreatedAt time.Time `json:"created_at"`
}

// GatewayUpdate is the body of PATCH /v1/gateways/{id}; absent fields
// stay as they are.
type GatewayUpdate struct {
	Draining *bool `json:"draining,omitempty"`
}

// PolicyRule is one ordered rule; the first matching rule decides, and no
// match means deny. Users, Groups and Apps hold names; "*" matches any.
// Its conditions (RuleConditions, all optional) must hold too.
// POST /v1/policies (PolicyRuleCreate), GET /v1/policies, DELETE /v1/policies/{id}.
type PolicyRule struct {
	ID          RuleID    `json:"id"`
	Position    int       `json:"position"`
	Action      Action    `json:"action"`
	Users       []string  `json:"users,omitempty"`
	Groups      []string  `json:"groups,omitempty"`
	Apps        []string  `json:"apps"`
	Description string    `json:"description,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	RuleConditions
}

// PolicyRuleCreate is the body of POST /v1/policies. Position 0 appends;
// position N inserts before the rule now at N (1-based).
type PolicyRuleCreate struct {
	Position    int      `json:"position,omitempty"`
	Action      Action   `json:"action"`
	Users       []string `json:"users,omitempty"`
	Groups      []string `json:"groups,omitempty"`
	Apps        []string `json:"apps"`
	Description string   `json:"description,omitempty"`
	RuleConditions
}

// Device is a client installation bound to one user (GET /v1/devices,
// PATCH /v1/devices/{id} with DeviceUpdate).
type Device struct {
	ID          DeviceID     `json:"id"`
	User        string       `json:"user"`
	Name        string       `json:"name"`
	OverlayIP   netip.Addr   `json:"overlay_ip"`
	WGPublicKey key.WGPublic `json:"wg_public_key"`
	Disabled    bool         `json:"disabled"`
	// Approved says an admin approved the device, or that it enrolled
	// while the controller did not require approval
	// (--require-device-approval). With that setting, an unapproved device
	// gets no grant; rules may require an approved device in any case.
	Approved  bool      `json:"approved"`
	CreatedAt time.Time `json:"created_at"`
	LastSeen  time.Time `json:"last_seen,omitzero"`
	// KeyPin is the SHA-256 (hex) of the device's current public key:
	// only certificates for that key are this device. Login and key
	// rotation set it; empty accepts any certificate issued to the device.
	KeyPin string `json:"key_pin,omitempty"`
	// Posture is the device's latest accepted posture report (nil: none
	// yet), and PostureAt when the controller accepted it.
	Posture   *Posture  `json:"posture,omitempty"`
	PostureAt time.Time `json:"posture_at,omitzero"`
}

// DeviceUpdate is the body of PATCH /v1/devices/{id}. Nil fields are unchanged.
type DeviceUpdate struct {
	Disabled *bool `json:"disabled,omitempty"`
	Approved *bool `json:"approved,omitempty"`
}

// Grant is the unit of access: one device, one app, through one gateway,
// until NotAfter (GET /v1/grants, DELETE /v1/grants/{id} revokes).
type Grant struct {
	ID        GrantID       `json:"id"`
	DeviceID  DeviceID      `json:"device_id"`
	User      string        `json:"user"`
	App       string        `json:"app"`
	GatewayID GatewayID     `json:"gateway_id"`
	ClientIP  netip.Addr    `json:"client_ip"`
	Targets   []GrantTarget `json:"targets"`
	Ports     []PortRange   `json:"ports"`
	Rule      RuleID        `json:"rule"`
	CreatedAt time.Time     `json:"created_at"`
	NotAfter  time.Time     `json:"not_after"`
	// Name is the concrete name under one of the app's wildcard domains
	// this grant is for ("a.corp.internal" under "*.corp.internal"); its
	// only target is that name's virtual IP. Empty for a grant of the whole
	// app (requested by app name, exact domain or address).
	Name string `json:"name,omitempty"`
	// Export marks a grant made by POST /v1/exports for a stock WireGuard
	// client: ClientIP and the client key are the export's own, not the
	// device's, and it cannot be renewed.
	Export bool `json:"export,omitempty"`
}

// GrantTarget is one destination a grant covers. Prefix is what the client
// routes into the tunnel; Host, when set, is the name the gateway resolves and
// dials for connections to Prefix (a domain app's virtual IP). With Host empty
// the gateway dials the destination address itself (an address/CIDR app).
type GrantTarget struct {
	Prefix netip.Prefix `json:"prefix"`
	Host   string       `json:"host,omitempty"`
}

// AuditEvent records a decision or change (GET /v1/audit).
type AuditEvent struct {
	ID        int64     `json:"id"`
	Time      time.Time `json:"time"`
	Type      string    `json:"type"`  // e.g. "grant.allow", "grant.deny", "login", "admin.user.add"
	Actor     string    `json:"actor"` // who did it: "user:alice", "admin:tok_…", "gateway:gw_…"
	User      string    `json:"user,omitempty"`
	DeviceID  DeviceID  `json:"device_id,omitempty"`
	App       string    `json:"app,omitempty"`
	GatewayID GatewayID `json:"gateway_id,omitempty"`
	GrantID   GrantID   `json:"grant_id,omitempty"`
	Rule      RuleID    `json:"rule,omitempty"`
	Source    string    `json:"source,omitempty"` // client address as the controller saw it
	Reason    string    `json:"reason,omitempty"`
}

// FlowRecord is one proxied connection as the gateway saw it
// (POST /v1/gateway/flows by gateways; GET /v1/flows for admins).
type FlowRecord struct {
	GrantID     GrantID    `json:"grant_id"`
	GatewayID   GatewayID  `json:"gateway_id,omitempty"` // set by the controller from the mTLS identity
	DeviceID    DeviceID   `json:"device_id"`
	ClientIP    netip.Addr `json:"client_ip"`
	App         string     `json:"app"`
	Proto       string     `json:"proto"`       // "tcp" or "udp"
	Destination string     `json:"destination"` // host:port the gateway dialled
	BytesUp     uint64     `json:"bytes_up"`    // client → app
	BytesDown   uint64     `json:"bytes_down"`  // app → client
	Start       time.Time  `json:"start"`
	End         time.Time  `json:"end"`
	Error       string     `json:"error,omitempty"` // why it ended, if not cleanly
}

// FlowBatch is the body of POST /v1/gateway/flows.
type FlowBatch struct {
	Records []FlowRecord `json:"records"`
}

// --- Client ----------------------------------------------------------------

// LoginRequest is the body of POST /v1/login (TLS, no client certificate
// yet). The device key pair is generated on the device; only the CSR and the
// WireGuard public key travel.
type LoginRequest struct {
	User     string `json:"user"`
	Password string `json:"password"`
	// DeviceID re-uses an existing device of this user on re-login; empty
	// enrols a new device.
	DeviceID    DeviceID     `json:"device_id,omitempty"`
	DeviceName  string       `json:"device_name"`
	CSR         string       `json:"csr"` // PEM, ECDSA P-256, signed by the device key
	WGPublicKey key.WGPublic `json:"wg_public_key"`
	// MFACode is the second factor of a user with MFA: six digits from the
	// authenticator app, or one of the user's recovery codes (each works
	// once). Without it such a login is refused with mfa_required.
	MFACode string `json:"mfa_code,omitempty"`
}

// LoginResponse answers a successful login. Session is only valid together
// with the device certificate (mTLS) it was issued for.
type LoginResponse struct {
	DeviceID         DeviceID   `json:"device_id"`
	User             string     `json:"user"`
	Session          string     `json:"session"`
	SessionExpiresAt time.Time  `json:"session_expires_at"`
	Certificate      string     `json:"certificate"` // PEM device certificate
	OverlayIP        netip.Addr `json:"overlay_ip"`
	// STUN is where the client learns its reflexive address (none: zero).
	STUN netip.AddrPort `json:"stun,omitzero"`
}

// MFAEnrolment answers POST /v1/mfa/enrol (device): a new TOTP secret
// for the device's user, pending until confirmed with a code from it
// (POST /v1/mfa/confirm) before ExpiresAt. URI and Secret hold the secret:
// they are shown this once and never again.
type MFAEnrolment struct {
	// URI is the otpauth:// URI authenticator apps read from a QR code.
	URI string `json:"uri"`
	// Secret is the base32 secret, for typing into an app by hand.
	Secret    string    `json:"secret"`
	ExpiresAt time.Time `json:"expires_at"`
}

// MFAConfirm is the body of POST /v1/mfa/confirm: the first code of the
// pending enrolment.
type MFAConfirm struct {
	Code string `json:"code"`
}

// MFAConfirmation answers POST /v1/mfa/confirm: MFA is active, and these
// single-use recovery codes (shown this once) each stand in for a code.
type MFAConfirmation struct {
	RecoveryCodes []string `json:"recovery_codes"`
}

// CertificateRenewal is the body of POST /v1/device/certificate and
// POST /v1/gateway/certificate (mTLS with the current certificate): a CSR for
// the same key; the answer is a CertificateResponse.
type CertificateRenewal struct {
	CSR string `json:"csr"`
}

// KeyRotation is the body of POST /v1/device/rotate (mTLS with the current
// certificate, plus the session): the device replaces both of its keys. CSR
// is for a new device key (the answer is a CertificateResponse for it) and
// WGPublicKey is the device's new WireGuard key; the controller re-keys the
// device's live grants on their gateways before it answers, so open
// connections survive.
type KeyRotation struct {
	CSR         string       `json:"csr"`
	WGPublicKey key.WGPublic `json:"wg_public_key"`
}

// CertificateResponse carries a freshly signed certificate.
type CertificateResponse struct {
	Certificate string `json:"certificate"`
}

// GrantRequest is the body of POST /v1/grants (mTLS device certificate plus
// "Authorization: Bearer <session>").
type GrantRequest struct {
	// App is an app name, one of its exact domains, a name under one of its
	// wildcard domains (then the grant covers that name only; see
	// Grant.Name), a virtual IP, or an address inside the app. Anything
	// that is not an app name or an address must be a valid DNS name.
	App string `json:"app"`
	// Proto and Port say what the client wants to reach; Port 0 means
	// "whatever the app serves".
	Proto string `json:"proto,omitempty"`
	Port  uint16 `json:"port,omitempty"`
	// Candidates are the client's addresses, for the gateway to punch
	// towards (at most 8).
	Candidates []Candidate `json:"candidates,omitempty"`
	// Posture is the device's signed posture report. A request without
	// one is judged as from a device whose posture is unknown: rules
	// that require a posture profile do not match it.
	Posture *SignedPosture `json:"posture,omitempty"`
}

// GrantRenewal is the optional body of POST /v1/grants/{id}/renew: a client
// whose addresses changed (it roamed) sends its current candidates, and the
// gateway punches towards them before the renewal is answered.
type GrantRenewal struct {
	Candidates []Candidate `json:"candidates,omitempty"`
	// Posture is the device's current signed posture report, as in
	// GrantRequest: renewal re-runs the policy on it.
	Posture *SignedPosture `json:"posture,omitempty"`
}

// GrantResponse answers an allowed grant or renewal: the WireGuard peer to
// add, scoped to this app.
type GrantResponse struct {
	Grant Grant `json:"grant"`
	Peer  Peer  `json:"peer"`
	// RenewAfter is when the client should renew (about 2/3 of the lifetime).
	RenewAfter time.Time `json:"renew_after"`
	// STUN is the server the client learns its reflexive address from.
	STUN netip.AddrPort `json:"stun,omitzero"`
}

// Peer is a WireGuard peer as the client should configure it.
type Peer struct {
	GatewayID GatewayID        `json:"gateway_id"`
	PublicKey key.WGPublic     `json:"public_key"`
	Endpoints []netip.AddrPort `json:"endpoints"`
	// AllowedIPs are this grant's targets only; the client unions them over
	// all its live grants through the same gateway.
	AllowedIPs []netip.Prefix `json:"allowed_ips"`
	// Candidates are where the gateway may be reached: probe them all with
	// connectivity checks (USERNAME the grant ID, key CheckKey) and send
	// WireGuard to the best that answers. Endpoints is the host and
	// server-reflexive subset, for older clients.
	Candidates []Candidate `json:"candidates,omitempty"`
	CheckKey   []byte      `json:"check_key,omitempty"`
}

// Candidate types (RFC 8445 §5.1.1).
const (
	CandidateHost  = "host"  // a local interface address
	CandidateSrflx = "srflx" // the address a STUN server saw
	CandidateRelay = "relay" // a TURN allocation's relayed address
)

// Candidate is an address a client or gateway may be reachable at.
type Candidate struct {
	Type string         `json:"type"`
	Addr netip.AddrPort `json:"addr"`
}

// MaxCandidates bounds every candidate list on the wire.
const MaxCandidates = 8

// Relay is a TURN relay and the short-lived credentials to allocate on it
// (TURN REST API style: Password is an HMAC of Username, which carries the
// expiry). Password is a secret; it is never logged.
type Relay struct {
	Addr      netip.AddrPort `json:"addr"`
	Username  string         `json:"username"`
	Password  string         `json:"password"`
	Realm     string         `json:"realm"`
	ExpiresAt time.Time      `json:"expires_at"`
}

// Paths a WireGuard peer is reached by.
const (
	PathDirect  = "direct"
	PathRelayed = "relayed"
)

// PeerReport is one WireGuard peer as its node sees it (gateways send them
// with POST /v1/gateway/peers; admins read them in GET /v1/gateways).
type PeerReport struct {
	PublicKey     key.WGPublic   `json:"public_key"`
	DeviceID      DeviceID       `json:"device_id,omitempty"`
	Path          string         `json:"path,omitempty"` // PathDirect or PathRelayed; empty before a handshake
	Endpoint      netip.AddrPort `json:"endpoint,omitzero"`
	LastHandshake time.Time      `json:"last_handshake,omitzero"`
	RxBytes       uint64         `json:"rx_bytes"`
	TxBytes       uint64         `json:"tx_bytes"`
}

// PeerReports is the body of POST /v1/gateway/peers.
type PeerReports struct {
	Peers []PeerReport `json:"peers"`
}

// DeviceDomains is the answer of GET /v1/device/domains: every name and
// prefix any app serves, for the client's resolver and routes in TUN mode.
// It lists all apps, not only those the user may reach: the client answers
// these names itself and asks for a grant (refusing the query on a deny).
type DeviceDomains struct {
	// Domains are exact names and wildcard patterns ("*.corp.internal"),
	// sorted.
	Domains []string `json:"domains"`
	// Prefixes are the address apps' prefixes, sorted, masked, without
	// duplicates.
	Prefixes []netip.Prefix `json:"prefixes"`
	// Version changes whenever Domains or Prefixes change (it is a hash of
	// them); also the response's ETag.
	Version string `json:"version"`
}

// Device event types on GET /v1/device/events.
const (
	// DeviceEventHello is the first event of every stream; Version is the
	// current DeviceDomains version.
	DeviceEventHello = "hello"
	// DeviceEventGrantRevoked says grant GrantID of this device was revoked
	// (Reason says why): drop its routes and peer now.
	DeviceEventGrantRevoked = "grant.revoked"
	// DeviceEventDomainsChanged says the DeviceDomains set changed to
	// Version: fetch GET /v1/device/domains again.
	DeviceEventDomainsChanged = "domains.changed"
	// DeviceEventPostureChanged says the admin-defined posture checks
	// changed: fetch GET /v1/device/posture/checks again and report.
	DeviceEventPostureChanged = "posture.changed"
	// DeviceEventPing is a keepalive, every 15 s by default.
	DeviceEventPing = "ping"
	// DeviceEventGrantMoved says grant GrantID's gateway is gone and the
	// controller re-issued it through another gateway of the app's group
	// as NewGrantID (same app, targets and NotAfter): renew NewGrantID
	// (POST /v1/grants/{id}/renew) for its peer, install it and drop
	// GrantID. A grant.revoked for GrantID follows.
	DeviceEventGrantMoved = "grant.moved"
)

// DeviceEvent is one newline-delimited JSON event on a device's event
// stream (GET /v1/device/events). Events are not acknowledged: a client
// that reconnects has missed what came in between, and learns of a
// revocation it missed when renewing the grant fails.
type DeviceEvent struct {
	Type    string  `json:"type"`
	GrantID GrantID `json:"grant_id,omitempty"`
	// NewGrantID is the grant that replaces GrantID (grant.moved).
	NewGrantID GrantID `json:"new_grant_id,omitempty"`
	Reason     string  `json:"reason,omitempty"`
	Version    string  `json:"version,omitempty"`
	// Time is the controller's clock when it sent the event.
	Time time.Time `json:"time,omitzero"`
}

// --- Gateway ---------------------------------------------------------------

// EnrolRequest is the body of POST /v1/gateway/enrol (TLS, no client cert).
type EnrolRequest struct {
	Token       string       `json:"token"`
	Name        string       `json:"name"`
	CSR         string       `json:"csr"`
	WGPublicKey key.WGPublic `json:"wg_public_key"`
}

// EnrolResponse answers a successful enrolment.
type EnrolResponse struct {
	GatewayID   GatewayID  `json:"gateway_id"`
	Group       string     `json:"group"`
	Certificate string     `json:"certificate"`
	OverlayIP   netip.Addr `json:"overlay_ip"`
}

// GatewayHello is the body of POST /v1/gateway/hello (mTLS): what the
// gateway tells the controller before and whenever it changes.
type GatewayHello struct {
	WGPublicKey key.WGPublic     `json:"wg_public_key"`
	Endpoints   []netip.AddrPort `json:"endpoints"`
	// Candidates are the gateway's host, server-reflexive and relayed
	// addresses (at most 8).
	Candidates []Candidate `json:"candidates,omitempty"`
	Version    string      `json:"version"`
}

// GatewayHelloResponse answers a hello: where to learn the reflexive
// address, and the relay to hold an allocation on (nil: no relay).
type GatewayHelloResponse struct {
	STUN  netip.AddrPort `json:"stun,omitzero"`
	Relay *Relay         `json:"relay,omitempty"`
}

// Stream event types on GET /v1/gateway/stream.
const (
	EventSync   = "sync"   // Grants is the complete set of live grants; replace the table
	EventGrant  = "grant"  // add or update Grants
	EventRevoke = "revoke" // remove GrantIDs and close their connections
	EventPing   = "ping"   // keepalive; no ack needed
)

// StreamEvent is one newline-delimited JSON event on the gateway stream.
// Every event except ping must be acknowledged (GatewayAck) once applied;
// acks are cumulative.
type StreamEvent struct {
	Seq      uint64         `json:"seq"`
	Type     string         `json:"type"`
	Grants   []GatewayGrant `json:"grants,omitempty"`
	GrantIDs []GrantID      `json:"grant_ids,omitempty"`
	Reason   string         `json:"reason,omitempty"`
	// Time is the controller's clock when it sent the event, for skew logs.
	Time time.Time `json:"time"`
}

// GatewayGrant is a grant as a gateway enforces it.
type GatewayGrant struct {
	ID          GrantID       `json:"id"`
	DeviceID    DeviceID      `json:"device_id"`
	User        string        `json:"user"`
	App         string        `json:"app"`
	ClientIP    netip.Addr    `json:"client_ip"`
	ClientWGKey key.WGPublic  `json:"client_wg_key"`
	Targets     []GrantTarget `json:"targets"`
	Ports       []PortRange   `json:"ports"`
	NotAfter    time.Time     `json:"not_after"`
	// ClientCandidates are where to punch towards; CheckKey authenticates
	// connectivity checks under this grant (USERNAME is the grant ID).
	ClientCandidates []Candidate `json:"client_candidates,omitempty"`
	CheckKey         []byte      `json:"check_key,omitempty"`
}

// GatewayAck is the body of POST /v1/gateway/ack: every event up to and
// including Seq on stream Stream has been applied.
type GatewayAck struct {
	Stream string `json:"stream"`
	Seq    uint64 `json:"seq"`
}

// Stream headers: the controller names each stream so acks cannot be applied
// to a newer stream of the same gateway.
const HeaderStreamID = "Keyhole-Stream-Id"
