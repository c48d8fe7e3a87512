//go:build !linux

package wg

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"

	"github.com/keyhole-net/keyhole/internal/key"
)

// DefaultTUNName is the interface TUN mode creates when TUNConfig.Name is
// empty.
const DefaultTUNName = "keyhole0"

// ErrTUNUnsupported: TUN mode is implemented on Linux only.
var ErrTUNUnsupported = errors.New("wg: TUN mode is supported on Linux only; use the userspace mode (keyhole connect, keyhole up --socks5)")

// TUNConfig configures a WireGuard interface on a kernel TUN device.
type TUNConfig struct {
	Name       string
	PrivateKey key.WGPrivate
	Address    netip.Addr
	MTU        int
	ListenPort uint16
	Logger     *slog.Logger
	Filter     PacketFilter
}

// TUN is a WireGuard interface on a kernel TUN device (Linux only).
type TUN struct{ *wgDevice }

// NewTUN fails with ErrTUNUnsupported outside Linux.
func NewTUN(TUNConfig) (*TUN, error) { return nil, ErrTUNUnsupported }

// Name returns the interface name.
func (*TUN) Name() string { return "" }

// Address returns the overlay address.
func (*TUN) Address() netip.Addr { return netip.Addr{} }

// SetRoutes is not supported outside Linux.
func (*TUN) SetRoutes([]netip.Prefix) ([]netip.Prefix, error) { return nil, ErrTUNUnsupported }

// Routes returns nothing outside Linux.
func (*TUN) Routes() []netip.Prefix { return nil }

// DialContext is not supported outside Linux.
func (*TUN) DialContext(context.Context, string, netip.AddrPort) (net.Conn, error) {
	return nil, ErrTUNUnsupported
}

// KillConnections is not supported outside Linux.
func (*TUN) KillConnections([]netip.Prefix) (int, error) { return 0, ErrTUNUnsupported }

// Close does nothing outside Linux.
func (*TUN) Close() error { return nil }
