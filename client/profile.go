// Package client is the Keyhole client for a person's device: login (device
// key pair generated here, never sent), grant requests and renewal, the
// userspace WireGuard tunnel, local port forwards and a SOCKS5 proxy that
// requests grants on demand. It never listens beyond 127.0.0.1.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/apiclient"
	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// ErrNotLoggedIn means the data directory holds no login.
var ErrNotLoggedIn = errors.New("not logged in; run keyhole login")

// Profile is what a logged-in device keeps in its data directory. The
// session token lives in its own 0600 file, not here.
type Profile struct {
	ControllerURL string `json:"controller_url"`
	// ControllerFallbacks are other controllers of the same cluster the
	// client moves to, in turn, when the one it talks to is unreachable.
	ControllerFallbacks []string     `json:"controller_fallbacks,omitempty"`
	User                string       `json:"user"`
	DeviceID            api.DeviceID `json:"device_id"`
	OverlayIP           netip.Addr   `json:"overlay_ip"`
	SessionExpiresAt    time.Time    `json:"session_expires_at"`
	// STUN is the controller's STUN server (zero: none).
	STUN netip.AddrPort `json:"stun,omitzero"`
}

const (
	fileProfile = "profile.json"
	fileSession = "session.token"
	fileWGKey   = "wg.key"
)

// DefaultDataDir returns the per-user default data directory.
func DefaultDataDir() string {
	if d, err := os.UserConfigDir(); err == nil {
		return filepath.Join(d, "keyhole")
	}
	return ".keyhole"
}

// LoginConfig is what keyhole login needs.
type LoginConfig struct {
	ControllerURL string
	// ControllerFallbacks are other controllers of the same cluster (same
	// CA), remembered for failover (Profile.ControllerFallbacks).
	ControllerFallbacks []string
	CAFingerprint       string
	User                string
	Password            string
	DeviceName          string
	DataDir             string
	// MFACode is the second factor for a user with MFA: a TOTP code or a
	// recovery code. When it is empty and the controller asks for one
	// (mfa_required), PromptMFA, if set, is called for it and the login
	// is sent again.
	MFACode   string
	PromptMFA func() (string, error)
}

// Login authenticates the user, enrols this device (or re-keys it when the
// data directory already holds a login for the same user and controller),
// and saves the device identity and session in DataDir.
func Login(ctx context.Context, cfg LoginConfig) (*Profile, error) {
	if cfg.ControllerURL == "" || cfg.CAFingerprint == "" || cfg.User == "" {
		return nil, errors.New("login: --controller, --ca-fingerprint and --user are required")
	}
	// A fresh device key at every login: the old one stops working. The
	// previous device is re-used for the same user at the same controller.
	lk, err := newLoginKeys(ctx, cfg.ControllerURL, cfg.CAFingerprint, cfg.DataDir, cfg.DeviceName, func(old *Profile) bool { return old.User == cfg.User })
	if err != nil {
		return nil, fmt.Errorf("login: %w", err)
	}
	var resp api.LoginResponse
	req := api.LoginRequest{
		User: cfg.User, Password: cfg.Password, DeviceID: lk.device.DeviceID, DeviceName: lk.device.DeviceName,
		CSR: lk.device.CSR, WGPublicKey: lk.device.WGPublicKey, MFACode: cfg.MFACode,
	}
	err = lk.pinned.Do(ctx, "POST", "/v1/login", req, &resp)
	if apiclient.IsCode(err, api.CodeMFARequired) && req.MFACode == "" && cfg.PromptMFA != nil {
		if req.MFACode, err = cfg.PromptMFA(); err != nil {
			return nil, fmt.Errorf("login: %w", err)
		}
		err = lk.pinned.Do(ctx, "POST", "/v1/login", req, &resp)
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

// LoadProfile reads the login in dir.
func LoadProfile(dir string) (*Profile, error) {
	b, err := os.ReadFile(filepath.Join(dir, fileProfile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotLoggedIn
	}
	if err != nil {
		return nil, fmt.Errorf("load profile: %w", err)
	}
	var p Profile
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("load profile %s: %w", dir, err)
	}
	return &p, nil
}

// LoggedIn reports whether dir holds a login with a session (logout keeps
// the device identity but removes the session).
func LoggedIn(dir string) bool {
	if _, err := LoadProfile(dir); err != nil {
		return false
	}
	_, err := os.Stat(filepath.Join(dir, fileSession))
	return err == nil
}

// session is everything needed to talk to the controller as this device.
type session struct {
	profile *Profile
	api     *apiclient.Client

	mu    sync.Mutex // guards creds and wgKey, which key rotation replaces
	creds *trust.Credentials
	wgKey key.WGPrivate
}

// identity returns the device's current credentials and WireGuard key.
func (s *session) identity() (*trust.Credentials, key.WGPrivate) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.creds, s.wgKey
}

func loadSession(dir string) (*session, error) {
	p, err := LoadProfile(dir)
	if err != nil {
		return nil, err
	}
	creds, err := trust.LoadCredentials(dir)
	if errors.Is(err, trust.ErrNoCredentials) {
		return nil, ErrNotLoggedIn
	}
	if err != nil {
		return nil, err
	}
	tb, err := os.ReadFile(filepath.Join(dir, fileSession))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotLoggedIn
	}
	if err != nil {
		return nil, err
	}
	kb, err := os.ReadFile(filepath.Join(dir, fileWGKey))
	if err != nil {
		return nil, fmt.Errorf("load wireguard key: %w", err)
	}
	wgKey, err := key.ParseWGPrivate(strings.TrimSpace(string(kb)))
	if err != nil {
		return nil, err
	}
	c, err := apiclient.New(apiclient.Config{URL: p.ControllerURL, FallbackURLs: p.ControllerFallbacks, Credentials: creds, Bearer: strings.TrimSpace(string(tb))})
	if err != nil {
		return nil, err
	}
	return &session{profile: p, creds: creds, wgKey: wgKey, api: c}, nil
}

// Logout revokes this device's grants and session at the controller and
// removes the session from dir. The device identity stays, so a later login
// re-uses the device.
func Logout(ctx context.Context, dir string) error {
	s, err := loadSession(dir)
	if err != nil {
		return err
	}
	callErr := s.api.Do(ctx, "POST", "/v1/logout", nil, nil)
	if err := os.Remove(filepath.Join(dir, fileSession)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("logout: %w", err)
	}
	if callErr != nil {
		return fmt.Errorf("logout: local session removed, but the controller was not told: %w", callErr)
	}
	return nil
}
