package controller

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/relay"
	"github.com/keyhole-net/keyhole/internal/trust"
)

const (
	// RelayOff as Config.RelayListen runs no embedded relay.
	RelayOff = "off"
	// DefaultRelayPort is the TURN/STUN port of the embedded relay.
	DefaultRelayPort = 3478
	// gatewayRelayLifetime is how long a gateway's TURN credentials last;
	// the gateway asks again (with a hello) before they run out.
	gatewayRelayLifetime = 12 * time.Hour
	relayRealm           = "keyhole"
)

// loadRelaySecret returns cfg.RelaySecret, or the secret in
// DATA/relay.secret, created on first start.
func loadRelaySecret(cfg Config) ([]byte, error) {
	if len(cfg.RelaySecret) > 0 {
		if len(cfg.RelaySecret) < 16 {
			return nil, errors.New("relay secret: at least 16 bytes")
		}
		return cfg.RelaySecret, nil
	}
	path := filepath.Join(cfg.DataDir, "relay.secret")
	s, err := loadOrCreateSecret(path)
	if err != nil {
		return nil, fmt.Errorf("relay secret: %w", err)
	}
	if len(s) < 16 {
		return nil, fmt.Errorf("relay secret %s: at least 16 characters", path)
	}
	return []byte(s), nil
}

// loadOrCreateSecret returns the text of the secret file path, first
// writing 32 random bytes in hex to it (mode 0600) if it does not exist.
func loadOrCreateSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	var raw [32]byte
	_, _ = rand.Read(raw[:])
	s := hex.EncodeToString(raw[:])
	if err := trust.WriteSecret(path, []byte(s+"\n")); err != nil {
		return "", err
	}
	return s, nil
}

// startRelay binds the embedded relay next to the API listener l, unless
// the configuration says to use an external one.
func (c *Controller) startRelay(l net.Addr) error {
	if c.cfg.RelayListen == RelayOff {
		if !c.cfg.RelayAddr.IsValid() {
			c.log.Warn("no relay: clients and gateways behind symmetric NATs cannot connect (set a relay address)")
		}
		c.relayAddr = c.cfg.RelayAddr
		return nil
	}
	listen := c.cfg.RelayListen
	apiAddr, _ := netip.ParseAddrPort(l.String())
	if listen == "" {
		port := uint16(DefaultRelayPort)
		if apiAddr.Port() != 0 && strings.HasSuffix(c.cfg.Listen, ":0") {
			port = 0 // a test controller on a random port gets a random relay port
		}
		listen = netip.AddrPortFrom(apiAddr.Addr().Unmap(), port).String()
	}
	la, err := netip.ParseAddrPort(listen)
	if err != nil {
		return fmt.Errorf("relay listen %q: want IP:port: %w", listen, err)
	}
	public := c.cfg.RelayAddr.Addr()
	if !public.IsValid() && la.Addr().IsUnspecified() {
		public = c.guessPublicIP()
		c.log.Warn("relay listens on all addresses; advertising a guessed address (set the relay address to be sure)", "addr", public)
	}
	srv, err := relay.New(relay.Config{
		Listen: la, PublicIP: public, Realm: relayRealm, Secret: c.relaySecret,
		Logger: c.log.With("component", "relay"), Now: c.now, ListenUDP: c.cfg.RelayListenUDP, Tap: c.cfg.RelayTap,
	})
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	c.relay = srv
	c.relayAddr = c.cfg.RelayAddr
	if !c.relayAddr.IsValid() {
		c.relayAddr = srv.Addr()
		if public.IsValid() {
			c.relayAddr = netip.AddrPortFrom(public, srv.Addr().Port())
		}
	}
	return nil
}

// guessPublicIP picks the first non-loopback IP among the certificate
// names, else 127.0.0.1.
func (c *Controller) guessPublicIP() netip.Addr {
	for _, n := range c.cfg.Names {
		if ip, err := netip.ParseAddr(n); err == nil && !ip.IsLoopback() && !ip.IsUnspecified() {
			return ip
		}
	}
	return netip.MustParseAddr("127.0.0.1")
}

// Relay returns the embedded relay, or nil when it is off.
func (c *Controller) Relay() *relay.Server { return c.relay }

// RelayAddr is the relay (and STUN server) address handed out.
func (c *Controller) RelayAddr() netip.AddrPort { return c.relayAddr }

// gatewayRelay issues a gateway's TURN credentials, or nil without a relay.
func (c *Controller) gatewayRelay(gw api.GatewayID) (*api.Relay, error) {
	if !c.relayAddr.IsValid() {
		return nil, nil
	}
	exp := c.now().Add(gatewayRelayLifetime).Truncate(time.Second)
	user, pass, err := relay.Issue(c.relaySecret, relay.Claims{Expires: exp, Role: relay.RoleGateway, Subject: string(gw)})
	if err != nil {
		return nil, fmt.Errorf("relay credentials: %w", err)
	}
	return &api.Relay{Addr: c.relayAddr, Username: user, Password: pass, Realm: relayRealm, ExpiresAt: exp}, nil
}

// checkKey is the connectivity-check key of a grant: both ends get it, and
// it is derived rather than stored so that a gateway's sync after a
// controller restart hands out the same key the client holds.
func (c *Controller) checkKey(id api.GrantID) []byte {
	m := hmac.New(sha256.New, c.relaySecret)
	m.Write([]byte("keyhole check key\x00"))
	m.Write([]byte(id))
	return m.Sum(nil)[:16]
}

// validCandidates checks a candidate list from the network.
func validCandidates(cs []api.Candidate) error {
	if len(cs) > api.MaxCandidates {
		return badRequest("at most %d candidates", api.MaxCandidates)
	}
	for _, c := range cs {
		switch c.Type {
		case api.CandidateHost, api.CandidateSrflx, api.CandidateRelay:
		default:
			return badRequest("candidate type %q: want host, srflx or relay", c.Type)
		}
		if !c.Addr.IsValid() || c.Addr.Port() == 0 || c.Addr.Addr().IsUnspecified() || c.Addr.Addr().IsMulticast() {
			return badRequest("candidate %v is not a usable address:port", c.Addr)
		}
	}
	return nil
}
