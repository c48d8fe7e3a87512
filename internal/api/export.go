package api

import (
	"net/netip"

	"github.com/keyhole-net/keyhole/internal/key"
)

// ExportRequest is the body of POST /v1/exports (the same device
// authentication as POST /v1/grants): a grant for one app, not for this
// device's tunnel but for a stock WireGuard client (a phone, a machine
// without Keyhole) holding the private key of PublicKey. The key pair is
// made by the exporting device; only the public key travels.
type ExportRequest struct {
	// App is an app name, one of its domains, or an address inside it.
	App string `json:"app"`
	// PublicKey is the stock client's WireGuard key. It must be fresh: a
	// key that a device or an earlier export holds is refused (409).
	PublicKey key.WGPublic `json:"public_key"`
	// TTL is how long the export lives (0: the controller default, 1h).
	// Exports are never renewed; a TTL over the controller's maximum is
	// refused (400), not shortened.
	TTL Duration `json:"ttl,omitempty"`
}

// ExportResponse answers an allowed export: everything a wg-quick
// configuration needs besides the private key, which only the exporting
// device has.
type ExportResponse struct {
	// Grant is the export grant (Export set; revocable like any grant).
	Grant Grant `json:"grant"`
	// Peer is the gateway. Endpoints holds only addresses a stock client
	// can send to directly (host and server-reflexive, best first, never
	// a relay); AllowedIPs are the app's targets only.
	Peer Peer `json:"peer"`
	// Address is the export's own overlay address (the interface address
	// of the stock client; the grant's ClientIP).
	Address netip.Addr `json:"address"`
	// Names maps each of the app's domains to its virtual IP: a stock
	// client has no split resolver, so these go into its hosts file.
	Names map[string]netip.Addr `json:"names,omitempty"`
}
