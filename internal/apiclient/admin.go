package apiclient

import (
	"context"
	"net/url"
	"strconv"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

// Admin wraps a Client authenticated with an admin token, with one typed
// method per admin endpoint.
type Admin struct{ c *Client }

// NewAdmin returns an admin API client.
func NewAdmin(controllerURL, fingerprint, token string) (*Admin, error) {
	c, err := New(Config{URL: controllerURL, Fingerprint: fingerprint, Bearer: token})
	if err != nil {
		return nil, err
	}
	return &Admin{c: c}, nil
}

// AdminFor returns an admin API client over c (whose Bearer is an admin
// token).
func AdminFor(c *Client) *Admin { return &Admin{c: c} }

// Client returns the underlying client.
func (a *Admin) Client() *Client { return a.c }

// AddUser creates a user.
func (a *Admin) AddUser(ctx context.Context, u api.UserCreate) (api.User, error) {
	var out api.User
	return out, a.c.Do(ctx, "POST", "/v1/users", u, &out)
}

// Users lists users.
func (a *Admin) Users(ctx context.Context) ([]api.User, error) {
	var out []api.User
	return out, a.c.Do(ctx, "GET", "/v1/users", nil, &out)
}

// UpdateUser changes a user.
func (a *Admin) UpdateUser(ctx context.Context, name string, u api.UserUpdate) (api.User, error) {
	var out api.User
	return out, a.c.Do(ctx, "PATCH", "/v1/users/"+url.PathEscape(name), u, &out)
}

// RemoveUser deletes a user.
func (a *Admin) RemoveUser(ctx context.Context, name string) error {
	return a.c.Do(ctx, "DELETE", "/v1/users/"+url.PathEscape(name), nil, nil)
}

// ResetMFA removes a user's MFA enrolment and recovery codes.
func (a *Admin) ResetMFA(ctx context.Context, name string) error {
	return a.c.Do(ctx, "DELETE", "/v1/users/"+url.PathEscape(name)+"/mfa", nil, nil)
}

// AddGroup creates a group.
func (a *Admin) AddGroup(ctx context.Context, name string) (api.Group, error) {
	var out api.Group
	return out, a.c.Do(ctx, "POST", "/v1/groups", api.Group{Name: name}, &out)
}

// Groups lists groups.
func (a *Admin) Groups(ctx context.Context) ([]api.Group, error) {
	var out []api.Group
	return out, a.c.Do(ctx, "GET", "/v1/groups", nil, &out)
}

// AddApp creates an app.
func (a *Admin) AddApp(ctx context.Context, app api.AppCreate) (api.App, error) {
	var out api.App
	return out, a.c.Do(ctx, "POST", "/v1/apps", app, &out)
}

// Apps lists apps.
func (a *Admin) Apps(ctx context.Context) ([]api.App, error) {
	var out []api.App
	return out, a.c.Do(ctx, "GET", "/v1/apps", nil, &out)
}

// RemoveApp deletes an app.
func (a *Admin) RemoveApp(ctx context.Context, name string) error {
	return a.c.Do(ctx, "DELETE", "/v1/apps/"+url.PathEscape(name), nil, nil)
}

// AddGatewayGroup creates a gateway group.
func (a *Admin) AddGatewayGroup(ctx context.Context, name string) (api.GatewayGroup, error) {
	var out api.GatewayGroup
	return out, a.c.Do(ctx, "POST", "/v1/gateway-groups", api.GatewayGroup{Name: name}, &out)
}

// GatewayGroups lists gateway groups.
func (a *Admin) GatewayGroups(ctx context.Context) ([]api.GatewayGroup, error) {
	var out []api.GatewayGroup
	return out, a.c.Do(ctx, "GET", "/v1/gateway-groups", nil, &out)
}

// GatewayToken creates a one-time enrolment token for group.
func (a *Admin) GatewayToken(ctx context.Context, group string, ttl time.Duration) (api.GatewayToken, error) {
	var out api.GatewayToken
	return out, a.c.Do(ctx, "POST", "/v1/gateway-tokens", api.GatewayTokenCreate{Group: group, TTL: api.Duration(ttl)}, &out)
}

// Gateways lists gateways.
func (a *Admin) Gateways(ctx context.Context) ([]api.Gateway, error) {
	var out []api.Gateway
	return out, a.c.Do(ctx, "GET", "/v1/gateways", nil, &out)
}

// UpdateGateway changes a gateway (drain or undrain it).
func (a *Admin) UpdateGateway(ctx context.Context, id api.GatewayID, u api.GatewayUpdate) (api.Gateway, error) {
	var out api.Gateway
	return out, a.c.Do(ctx, "PATCH", "/v1/gateways/"+url.PathEscape(string(id)), u, &out)
}

// AddPolicy inserts a policy rule.
func (a *Admin) AddPolicy(ctx context.Context, r api.PolicyRuleCreate) (api.PolicyRule, error) {
	var out api.PolicyRule
	return out, a.c.Do(ctx, "POST", "/v1/policies", r, &out)
}

// Policies lists the rules in order.
func (a *Admin) Policies(ctx context.Context) ([]api.PolicyRule, error) {
	var out []api.PolicyRule
	return out, a.c.Do(ctx, "GET", "/v1/policies", nil, &out)
}

// RemovePolicy deletes a rule.
func (a *Admin) RemovePolicy(ctx context.Context, id api.RuleID) error {
	return a.c.Do(ctx, "DELETE", "/v1/policies/"+url.PathEscape(string(id)), nil, nil)
}

// RemoveDevice removes a device: its grants are revoked, its sessions
// end, and it must enrol again.
func (a *Admin) RemoveDevice(ctx context.Context, id api.DeviceID) error {
	return a.c.Do(ctx, "DELETE", "/v1/devices/"+url.PathEscape(string(id)), nil, nil)
}

// AddPostureProfile creates a posture profile.
func (a *Admin) AddPostureProfile(ctx context.Context, p api.PostureProfile) (api.PostureProfile, error) {
	var out api.PostureProfile
	return out, a.c.Do(ctx, "POST", "/v1/posture", p, &out)
}

// UpdatePostureProfile replaces the posture profile of p.Name.
func (a *Admin) UpdatePostureProfile(ctx context.Context, p api.PostureProfile) (api.PostureProfile, error) {
	var out api.PostureProfile
	return out, a.c.Do(ctx, "PUT", "/v1/posture/"+url.PathEscape(p.Name), p, &out)
}

// PostureProfiles lists the posture profiles by name.
func (a *Admin) PostureProfiles(ctx context.Context) ([]api.PostureProfile, error) {
	var out []api.PostureProfile
	return out, a.c.Do(ctx, "GET", "/v1/posture", nil, &out)
}

// RemovePostureProfile deletes a posture profile no rule names.
func (a *Admin) RemovePostureProfile(ctx context.Context, name string) error {
	return a.c.Do(ctx, "DELETE", "/v1/posture/"+url.PathEscape(name), nil, nil)
}

// WhyQuery names the request GET /v1/why explains; zero fields are left
// out (unknown to the evaluation).
type WhyQuery struct {
	User, App string
	Device    api.DeviceID
	Source    string
	At        time.Time
	// MFAAt is the session's last MFA: an RFC 3339 time, "never", or ""
	// (not given: taken as never, with a note).
	MFAAt string
}

// Why explains how the policy decides the request q describes.
func (a *Admin) Why(ctx context.Context, q WhyQuery) (api.Why, error) {
	v := url.Values{"user": {q.User}, "app": {q.App}}
	if q.Device != "" {
		v.Set("device", string(q.Device))
	}
	if q.Source != "" {
		v.Set("source", q.Source)
	}
	if !q.At.IsZero() {
		v.Set("at", q.At.Format(time.RFC3339Nano))
	}
	if q.MFAAt != "" {
		v.Set("mfa_at", q.MFAAt)
	}
	var out api.Why
	return out, a.c.Do(ctx, "GET", "/v1/why?"+v.Encode(), nil, &out)
}

// Devices lists devices.
func (a *Admin) Devices(ctx context.Context) ([]api.Device, error) {
	var out []api.Device
	return out, a.c.Do(ctx, "GET", "/v1/devices", nil, &out)
}

// UpdateDevice changes a device.
func (a *Admin) UpdateDevice(ctx context.Context, id api.DeviceID, u api.DeviceUpdate) (api.Device, error) {
	var out api.Device
	return out, a.c.Do(ctx, "PATCH", "/v1/devices/"+url.PathEscape(string(id)), u, &out)
}

// Grants lists live grants.
func (a *Admin) Grants(ctx context.Context) ([]api.Grant, error) {
	var out []api.Grant
	return out, a.c.Do(ctx, "GET", "/v1/grants", nil, &out)
}

// RevokeGrant revokes a grant at once.
func (a *Admin) RevokeGrant(ctx context.Context, id api.GrantID) error {
	return a.c.Do(ctx, "DELETE", "/v1/grants/"+url.PathEscape(string(id)), nil, nil)
}

// AuditFilter narrows an audit listing.
type AuditFilter struct {
	Type, User, App string
	Limit           int
}

// Audit lists audit events, newest first.
func (a *Admin) Audit(ctx context.Context, f AuditFilter) ([]api.AuditEvent, error) {
	q := url.Values{}
	if f.Type != "" {
		q.Set("type", f.Type)
	}
	if f.User != "" {
		q.Set("user", f.User)
	}
	if f.App != "" {
		q.Set("app", f.App)
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var out []api.AuditEvent
	return out, a.c.Do(ctx, "GET", "/v1/audit?"+q.Encode(), nil, &out)
}

// Flows lists flow records, newest first; grant "" lists all.
func (a *Admin) Flows(ctx context.Context, grant api.GrantID, limit int) ([]api.FlowRecord, error) {
	q := url.Values{}
	if grant != "" {
		q.Set("grant", string(grant))
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var out []api.FlowRecord
	return out, a.c.Do(ctx, "GET", "/v1/flows?"+q.Encode(), nil, &out)
}
