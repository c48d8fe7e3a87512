// Package store is the controller's persistent state behind one interface,
// Store. Implementations live in subpackages (sqlite/ and postgres/)
// and must pass the same conformance suite (storetest). The database is the
// source of truth: users, groups, apps, gateways, policy, devices, sessions,
// grants, audit events and flow records.
//
// Secrets never reach the store in clear: tokens, sessions and recovery
// codes are stored as SHA-256 hashes, passwords as argon2id hashes, TOTP
// secrets sealed with the controller's key (all computed by
// controller/auth).
package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/keyhole-net/keyhole/controller/ipam"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
)

// Sentinel errors callers branch on. Implementations wrap them.
var (
	// ErrNotFound means no row matched.
	ErrNotFound = errors.New("not found")
	// ErrConflict means a unique name or key already exists.
	ErrConflict = errors.New("already exists")
	// ErrTokenUsed means an enrolment token was consumed before.
	ErrTokenUsed = errors.New("token already used")
	// ErrExpired means a token or session is past its expiry.
	ErrExpired = errors.New("expired")
	// ErrLimit means a cap given by the caller was reached.
	ErrLimit = errors.New("limit reached")
)

// Pools are the overlay prefixes the store allocates addresses from. An
// address, once given to a device, app domain or gateway, stays with it.
type Pools struct {
	Devices  netip.Prefix // e.g. 100.64.0.0/11
	Apps     netip.Prefix // e.g. 100.96.0.0/12
	Gateways netip.Prefix // e.g. 100.112.0.0/12
}

// Validate checks that every pool is one ipam can allocate from and that
// no two overlap; every store checks its pools with it when it opens.
func (p Pools) Validate() error {
	named := []struct {
		name string
		pool netip.Prefix
	}{{"devices", p.Devices}, {"apps", p.Apps}, {"gateways", p.Gateways}}
	for i, a := range named {
		if err := ipam.Validate(a.pool); err != nil {
			return fmt.Errorf("%s pool: %w", a.name, err)
		}
		for _, b := range named[:i] {
			if a.pool.Overlaps(b.pool) {
				return fmt.Errorf("%s pool %v overlaps %s pool %v", a.name, a.pool, b.name, b.pool)
			}
		}
	}
	return nil
}

// User is a user row. Groups are names.
type User struct {
	api.User
	// PasswordHash is an argon2id PHC string; empty means no password login.
	PasswordHash string
}

// App is an app row. VirtualIPs are allocated by CreateApp, one per exact
// domain. Domains may also hold wildcard patterns ("*.corp.internal"),
// which have no address of their own: each concrete name under one gets
// its address from AddWildcardName.
type App = api.App

// IsWildcard reports whether an app domain is a wildcard pattern
// ("*.corp.internal") rather than an exact name.
func IsWildcard(domain string) bool { return strings.HasPrefix(domain, "*.") }

// WildcardName is a concrete name a wildcard domain app has served
// ("a.corp.internal" under "*.corp.internal"). Its virtual IP is the
// name's for good, like an exact domain's: it outlives the app.
type WildcardName struct {
	AppID     api.AppID
	Name      string
	VirtualIP netip.Addr
	CreatedAt time.Time
}

// Gateway is a gateway row.
type Gateway = api.Gateway

// Device is a device row.
type Device = api.Device

// EnrolToken is a one-time gateway enrolment token, stored by hash.
type EnrolToken struct {
	Hash      string // hex SHA-256 of the token
	Group     string
	CreatedAt time.Time
	ExpiresAt time.Time
}

// AdminToken is an admin API token, stored by hash.
type AdminToken struct {
	ID        string // "tok_…", safe to log
	Hash      string // hex SHA-256 of the token
	Scope     string // "admin" for now
	CreatedAt time.Time
	RevokedAt time.Time // zero while valid
}

// DeviceSession is a session with its device and the device's user, as
// Store.DeviceSession reads them. DeviceErr and UserErr are what Device
// and User would have returned (ErrNotFound when gone); with DeviceErr
// set, User is not read.
type DeviceSession struct {
	Session   Session
	Device    Device
	DeviceErr error
	User      User
	UserErr   error
}

// Session is a user session bound to one device.
type Session struct {
	Hash      string // hex SHA-256 of the session token
	DeviceID  api.DeviceID
	User      string
	CreatedAt time.Time
	ExpiresAt time.Time
	// MFAAt is when the login that made the session checked a second
	// factor (zero: password only).
	MFAAt time.Time
}

// MFA is a user's TOTP enrolment. Secret is sealed by the controller
// (auth.Sealer): the store never holds it in clear.
type MFA struct {
	User        string
	Secret      string
	CreatedAt   time.Time
	ConfirmedAt time.Time // zero while the enrolment waits for its first code
	// LastStep is the newest TOTP time step accepted; a code for it or an
	// earlier step is a replay.
	LastStep int64
}

// Grant is a grant row: the wire grant plus what only the controller keeps.
type Grant struct {
	api.Grant
	AppID        api.AppID
	ClientWGKey  key.WGPublic
	RevokedAt    time.Time // zero while not revoked
	RevokeReason string
	Facts        GrantFacts
}

// GrantFacts are the facts of the last request that allowed a grant (its
// creation or latest renewal) that policy conditions look at: what
// re-evaluation without a request (a policy change, a time window
// closing) checks the conditions against.
type GrantFacts struct {
	// Source is the client's address as the controller saw it; the zero
	// Addr when unknown.
	Source netip.Addr
	// MFAAt is the session's last MFA; zero for never.
	MFAAt time.Time
}

// LoginFailures is the failed-login count of one throttle key: a user
// name or a source address, as the controller spells them.
type LoginFailures struct {
	Key      string
	Failures int
	// Last is the latest failure; LockedUntil is when the lockout the
	// failures started ends (zero for none).
	Last, LockedUntil time.Time
}

// AuditQuery filters audit events. Zero fields do not filter.
type AuditQuery struct {
	Type     string // exact type, or a prefix ending in "." ("grant.")
	User     string
	DeviceID api.DeviceID
	App      string
	Since    time.Time
	Limit    int // 0 → 100; newest first
}

// Store is the controller's state. Every method that changes more than one
// row does so in one transaction. Names (users, groups, apps, gateway groups)
// are unique and case-sensitive.
type Store interface {
	// Users. CreateUser fails with ErrNotFound if a group does not exist.
	CreateUser(ctx context.Context, u User) error
	User(ctx context.Context, name string) (User, error)
	Users(ctx context.Context) ([]User, error)
	// UpdateUser replaces Disabled, PasswordHash and Groups of the named user.
	UpdateUser(ctx context.Context, u User) error
	DeleteUser(ctx context.Context, name string) error
	// ProvisionOIDCUser returns the user linked to l's (issuer, subject),
	// creating it without password on the identity's first login (ErrConflict
	// if l.User is taken), and sets its groups to those of l.Groups that
	// exist, in one transaction.
	ProvisionOIDCUser(ctx context.Context, l OIDCLogin) (User, error)

	// Groups.
	CreateGroup(ctx context.Context, g api.Group) error
	Groups(ctx context.Context) ([]api.Group, error)

	// Apps. CreateApp allocates one virtual IP per domain and returns the
	// stored app; it fails with ErrNotFound if the gateway group does not exist.
	CreateApp(ctx context.Context, a App) (App, error)
	App(ctx context.Context, name string) (App, error)
	Apps(ctx context.Context) ([]App, error)
	// DeleteApp removes the app and its wildcard names (their virtual IPs
	// stay reserved to the names).
	DeleteApp(ctx context.Context, name string) error

	// Wildcard names. AddWildcardName records n.Name under app n.AppID and
	// returns it with its virtual IP (the one the name already has, or a
	// new one from the apps pool), and whether this call added it. A name
	// the app already holds is returned as it is; a new one fails with
	// ErrLimit when the app holds limit names already, and with ErrNotFound
	// when the app does not exist. The caller checks that the name falls
	// under one of the app's patterns.
	AddWildcardName(ctx context.Context, n WildcardName, limit int) (WildcardName, bool, error)
	// WildcardNames lists the names of every app, ordered by app ID and name.
	WildcardNames(ctx context.Context) ([]WildcardName, error)

	// Gateway groups.
	CreateGatewayGroup(ctx context.Context, g api.GatewayGroup) error
	GatewayGroups(ctx context.Context) ([]api.GatewayGroup, error)

	// Enrolment tokens. ConsumeEnrolToken marks the token used and returns it;
	// ErrNotFound for an unknown hash, ErrTokenUsed, ErrExpired (checked
	// against now).
	CreateEnrolToken(ctx context.Context, t EnrolToken) error
	ConsumeEnrolToken(ctx context.Context, hash string, now time.Time) (EnrolToken, error)

	// Gateways. CreateGateway allocates OverlayIP and returns the row.
	CreateGateway(ctx context.Context, g Gateway) (Gateway, error)
	Gateway(ctx context.Context, id api.GatewayID) (Gateway, error)
	Gateways(ctx context.Context) ([]Gateway, error)
	// UpdateGatewayStatus sets the WireGuard key, endpoints and last-seen time.
	UpdateGatewayStatus(ctx context.Context, id api.GatewayID, wg key.WGPublic, endpoints []netip.AddrPort, seen time.Time) error
	// SetGatewayDraining sets whether a gateway is draining (no new
	// grants); ErrNotFound for an unknown gateway.
	SetGatewayDraining(ctx context.Context, id api.GatewayID, draining bool) error

	// Admin tokens.
	CreateAdminToken(ctx context.Context, t AdminToken) error
	AdminTokenByHash(ctx context.Context, hash string) (AdminToken, error)

	// Policy rules, ordered by Position (1-based, dense). InsertPolicyRule
	// puts r at r.Position (0 or past the end appends) and renumbers the rest
	// in one transaction; it returns the stored rule.
	PolicyRules(ctx context.Context) ([]api.PolicyRule, error)
	InsertPolicyRule(ctx context.Context, r api.PolicyRule) (api.PolicyRule, error)
	DeletePolicyRule(ctx context.Context, id api.RuleID) error

	// Devices. CreateDevice allocates OverlayIP and returns the row.
	CreateDevice(ctx context.Context, d Device) (Device, error)
	Device(ctx context.Context, id api.DeviceID) (Device, error)
	Devices(ctx context.Context) ([]Device, error)
	// UpdateDevice replaces Name, WGPublicKey, KeyPin, Disabled, Approved
	// and LastSeen.
	UpdateDevice(ctx context.Context, d Device) error
	// DeleteDevice removes the device and its sessions (ErrNotFound when
	// there is none); its grants stay, as the record of access given, and
	// its overlay address stays reserved to it.
	DeleteDevice(ctx context.Context, id api.DeviceID) error
	// SetDevicePosture stores p as the device's latest posture report,
	// accepted at at (Device.Posture, Device.PostureAt). It fails with
	// ErrConflict when the stored report was collected after p (an old
	// report replayed over a newer one; the same CollectedAt is accepted
	// again), and with ErrNotFound for an unknown device.
	SetDevicePosture(ctx context.Context, id api.DeviceID, p api.Posture, at time.Time) error

	// Posture profiles, ordered by name. CreatePostureProfile fails with
	// ErrConflict for a name in use; UpdatePostureProfile replaces the
	// profile of p.Name and DeletePostureProfile removes one, both with
	// ErrNotFound when there is none.
	PostureProfiles(ctx context.Context) ([]api.PostureProfile, error)
	CreatePostureProfile(ctx context.Context, p api.PostureProfile) error
	UpdatePostureProfile(ctx context.Context, p api.PostureProfile) error
	DeletePostureProfile(ctx context.Context, name string) error

	// MFA. CreateMFA stores a pending enrolment, replacing a pending one;
	// it fails with ErrConflict when the user has a confirmed one and with
	// ErrNotFound for an unknown user. MFA returns ErrNotFound when the
	// user has none. ConfirmMFA confirms the pending enrolment whose sealed
	// secret is secret, records step as used and stores the recovery code
	// hashes, in one transaction; ErrNotFound when no such pending
	// enrolment exists (it was replaced, confirmed or reset meanwhile).
	// UseMFAStep records step as used if it is after LastStep of a
	// confirmed enrolment and reports whether it was (false: a replay).
	// UseRecoveryCode marks an unused code used and returns how many stay
	// unused; ErrNotFound when no unused code of the user has that hash.
	// DeleteMFA removes the enrolment and the recovery codes; ErrNotFound
	// when there is none.
	CreateMFA(ctx context.Context, m MFA) error
	MFA(ctx context.Context, user string) (MFA, error)
	ConfirmMFA(ctx context.Context, user, secret string, step int64, at time.Time, recoveryHashes []string) error
	UseMFAStep(ctx context.Context, user string, step int64) (bool, error)
	UseRecoveryCode(ctx context.Context, user, hash string, at time.Time) (int, error)
	DeleteMFA(ctx context.Context, user string) error

	// Sessions.
	CreateSession(ctx context.Context, s Session) error
	Session(ctx context.Context, hash string) (Session, error)
	// DeviceSession reads what authenticates a device's every request
	// together: the session with hash (its error is DeviceSession's), the
	// session's device and that device's user, in one round trip where
	// the store has round trips. Each part is what Session, Device and
	// User return.
	DeviceSession(ctx context.Context, hash string) (DeviceSession, error)
	DeleteSessions(ctx context.Context, deviceID api.DeviceID) error

	// Grants. CreateGrant stores the grant and its audit event in one
	// transaction.
	CreateGrant(ctx context.Context, g Grant, ev api.AuditEvent) error
	Grant(ctx context.Context, id api.GrantID) (Grant, error)
	// LiveGrants lists grants not revoked and with NotAfter after now;
	// a non-empty gateway or device narrows the list.
	LiveGrants(ctx context.Context, now time.Time, gateway api.GatewayID, device api.DeviceID) ([]Grant, error)
	// LiveGrantsFor lists the live grants of one device for one app (the
	// grant path's "does this device already hold it?", without reading
	// all of the device's grants).
	LiveGrantsFor(ctx context.Context, now time.Time, device api.DeviceID, app api.AppID) ([]Grant, error)
	// RenewGrant sets a new NotAfter and the facts of the renewal on a
	// live grant and appends ev.
	RenewGrant(ctx context.Context, id api.GrantID, notAfter time.Time, facts GrantFacts, ev api.AuditEvent) error
	// RevokeGrants marks grants revoked (already revoked ones are left as
	// they are) and appends one audit event per grant revoked; it returns
	// the grants it revoked.
	RevokeGrants(ctx context.Context, ids []api.GrantID, reason string, now time.Time, ev api.AuditEvent) ([]Grant, error)
	// RekeyGrants sets the client WireGuard key of the device's live grants
	// (not revoked, NotAfter after now, not exports) to k, and returns them
	// as updated: the device rotated its key.
	RekeyGrants(ctx context.Context, device api.DeviceID, k key.WGPublic, now time.Time) ([]Grant, error)
	// CreateExport stores an export grant (g.Export set: a grant whose
	// client is a stock WireGuard client, not the device) and its audit
	// event in one transaction. It gives the grant its own overlay address
	// from the devices pool (g.ClientIP; like every address, never handed
	// out again) and returns the stored grant. It fails with ErrConflict
	// when g.ClientWGKey is a device's WireGuard key or was ever an
	// export's, and with ErrLimit when g.User already holds limit exports
	// that are live at g.CreatedAt.
	CreateExport(ctx context.Context, g Grant, ev api.AuditEvent, limit int) (Grant, error)

	// Failed logins, counted for every controller of a cluster.
	// LoginFailures returns the counts of those keys that have one.
	// AddLoginFailure counts a failure of key at at (a count whose last
	// failure is before fadeBefore starts again from one) and returns the
	// new count in one statement, so that concurrent failures on several
	// controllers each count. LockLogin extends key's lockout to until (a
	// shorter one never shortens it). ClearLoginFailures forgets key's
	// count. PruneLoginFailures deletes the counts whose last failure is
	// before fadeBefore and whose lockout is over at now.
	LoginFailures(ctx context.Context, keys ...string) ([]LoginFailures, error)
	AddLoginFailure(ctx context.Context, key string, at, fadeBefore time.Time) (LoginFailures, error)
	LockLogin(ctx context.Context, key string, until time.Time) error
	ClearLoginFailures(ctx context.Context, key string) error
	PruneLoginFailures(ctx context.Context, fadeBefore, now time.Time) (int, error)

	// Audit events and flow records. Append sets IDs.
	AppendAudit(ctx context.Context, evs ...api.AuditEvent) error
	Audit(ctx context.Context, q AuditQuery) ([]api.AuditEvent, error)
	AppendFlows(ctx context.Context, recs ...api.FlowRecord) error
	Flows(ctx context.Context, grant api.GrantID, limit int) ([]api.FlowRecord, error)

	// Close releases the database.
	Close() error
}
