//go:build !linux

package gateway

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/wg"
)

// kernelConfig configures the TUN mode's data plane (Linux only).
type kernelConfig struct {
	Name        string
	PrivateKey  key.WGPrivate
	Address     netip.Addr
	MTU         int
	ListenPort  uint16
	ClientRange netip.Prefix
	Filter      wg.PacketFilter
	Resolve     func(ctx context.Context, host string) (netip.Addr, error)
	Logger      *slog.Logger
}

// kernelPlane is the TUN mode's data plane (Linux only).
type kernelPlane struct{ *wg.TUN }

// newKernelPlane fails outside Linux.
func newKernelPlane(kernelConfig) (*kernelPlane, error) {
	return nil, errors.New("tun mode: the gateway's --tun is supported on Linux only")
}

func (*kernelPlane) noteRemoved(netip.Addr) {}

func (*kernelPlane) sync(context.Context, []api.GatewayGrant, func(src, dst netip.Addr, proto uint8, port uint16) bool, bool) error {
	return nil
}

func (*kernelPlane) unresolved() bool { return false }

// Close does nothing outside Linux.
func (*kernelPlane) Close() error { return nil }
