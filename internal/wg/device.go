package wg

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/nat"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// wgDevice is a running wireguard-go device and the peer operations both
// data planes share: Net (on a netstack) and TUN (on a kernel TUN device).
type wgDevice struct {
	dev  *device.Device
	bind *nat.Bind
	port uint16
}

// startDevice runs wireguard-go on tdev with a fresh nat.Bind, sets the key
// and port and brings the device up. On error tdev is closed.
func startDevice(tdev tun.Device, priv key.WGPrivate, listenPort uint16, log *slog.Logger) (*wgDevice, error) {
	d := &wgDevice{bind: nat.NewBind(conn.NewDefaultBind())}
	d.dev = device.NewDevice(tdev, d.bind, deviceLogger(log))
	uapi := fmt.Sprintf("private_key=%s\nlisten_port=%d\n", priv.UAPIHex(), listenPort)
	if err := d.dev.IpcSet(uapi); err != nil {
		d.dev.Close()
		// Not wrapped: the UAPI error may quote the line it rejected,
		// and that line holds the private key.
		return nil, errors.New("configure device key and port failed")
	}
	if err := d.dev.Up(); err != nil {
		d.dev.Close()
		return nil, fmt.Errorf("bring device up: %w", err)
	}
	port, err := d.readPort()
	if err != nil {
		d.dev.Close()
		return nil, err
	}
	d.port = port
	return d, nil
}

// readPort asks the device which UDP port its bind got.
func (d *wgDevice) readPort() (uint16, error) {
	uapi, err := d.dev.IpcGet()
	if err != nil {
		return 0, fmt.Errorf("read listen port: %w", err)
	}
	for line := range strings.Lines(uapi) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "listen_port="); ok {
			p, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				return 0, fmt.Errorf("read listen port %q: %w", v, err)
			}
			return uint16(p), nil
		}
	}
	return 0, errors.New("read listen port: device reported none")
}

// SetPrivateKey replaces the device's private key (key rotation). Peers
// stay; their sessions end and the next packet makes a new handshake with
// the new key.
func (d *wgDevice) SetPrivateKey(priv key.WGPrivate) error {
	if err := d.dev.IpcSet(fmt.Sprintf("private_key=%s\n", priv.UAPIHex())); err != nil {
		// Not wrapped: the error may quote the line, which holds the key.
		return errors.New("wg: set private key failed")
	}
	return nil
}

// Port returns the bound UDP port.
func (d *wgDevice) Port() uint16 { return d.port }

// Bind returns the UDP socket layer WireGuard runs on: it also carries STUN
// queries, connectivity checks and the TURN allocation (package nat).
func (d *wgDevice) Bind() *nat.Bind { return d.bind }

// UpsertPeer adds the peer or updates it in place. Allowed IPs are
// replaced; the session (keys, counters, learned endpoint if p.Endpoint is
// zero) is kept.
func (d *wgDevice) UpsertPeer(p Peer) error {
	if p.PublicKey.IsZero() {
		return errors.New("wg: upsert peer: public key is zero")
	}
	if p.PersistentKeepalive < 0 || p.PersistentKeepalive > 65535*time.Second {
		return fmt.Errorf("wg: upsert peer %s: persistent keepalive %v out of range", p.PublicKey, p.PersistentKeepalive)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "public_key=%s\n", p.PublicKey.UAPIHex())
	if p.Endpoint.IsValid() {
		fmt.Fprintf(&b, "endpoint=%s\n", p.Endpoint)
	}
	fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", int(p.PersistentKeepalive/time.Second))
	b.WriteString("replace_allowed_ips=true\n")
	for _, pfx := range p.AllowedIPs {
		if !pfx.IsValid() {
			return fmt.Errorf("wg: upsert peer %s: invalid allowed IP %v", p.PublicKey, pfx)
		}
		fmt.Fprintf(&b, "allowed_ip=%s\n", pfx.Masked())
	}
	if err := d.dev.IpcSet(b.String()); err != nil {
		return fmt.Errorf("wg: upsert peer %s: %w", p.PublicKey, err)
	}
	return nil
}

// RemovePeer removes the peer and its session. Removing an unknown peer is
// not an error.
func (d *wgDevice) RemovePeer(pub key.WGPublic) error {
	if err := d.dev.IpcSet(fmt.Sprintf("public_key=%s\nremove=true\n", pub.UAPIHex())); err != nil {
		return fmt.Errorf("wg: remove peer %s: %w", pub, err)
	}
	return nil
}

// Peers returns the state of every peer, parsed from the device's UAPI
// dump (the same data `wg show` prints).
func (d *wgDevice) Peers() ([]PeerStatus, error) {
	uapi, err := d.dev.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("wg: peers: %w", err)
	}
	peers, err := parsePeers(uapi)
	if err != nil {
		return nil, fmt.Errorf("wg: peers: %w", err)
	}
	return peers, nil
}

// parsePeers parses a UAPI get=1 response. Interface-level keys (including
// private_key) come before the first public_key and are skipped.
func parsePeers(uapi string) ([]PeerStatus, error) {
	var peers []PeerStatus
	cur := -1 // index into peers of the peer being parsed
	var hsSec, hsNsec int64
	finish := func() {
		if cur >= 0 && (hsSec != 0 || hsNsec != 0) {
			peers[cur].LastHandshake = time.Unix(hsSec, hsNsec).UTC()
		}
	}
	sc := bufio.NewScanner(strings.NewReader(uapi))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		if k == "public_key" {
			finish()
			pub, err := key.ParseWGPublicHex(v)
			if err != nil {
				return nil, err
			}
			peers = append(peers, PeerStatus{PublicKey: pub})
			cur = len(peers) - 1
			hsSec, hsNsec = 0, 0
			continue
		}
		if cur < 0 {
			continue
		}
		p := &peers[cur]
		var err error
		switch k {
		case "endpoint":
			var ap netip.AddrPort
			ap, p.Relayed = nat.IsRelayed(v)
			if !ap.IsValid() {
				err = fmt.Errorf("invalid endpoint %q", v)
			}
			p.Endpoint = ap
		case "last_handshake_time_sec":
			hsSec, err = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			hsNsec, err = strconv.ParseInt(v, 10, 64)
		case "rx_bytes":
			p.RxBytes, err = strconv.ParseUint(v, 10, 64)
		case "tx_bytes":
			p.TxBytes, err = strconv.ParseUint(v, 10, 64)
		case "persistent_keepalive_interval":
			var sec uint64
			sec, err = strconv.ParseUint(v, 10, 16)
			p.PersistentKeepalive = time.Duration(sec) * time.Second
		case "allowed_ip":
			var pfx netip.Prefix
			pfx, err = netip.ParsePrefix(v)
			p.AllowedIPs = append(p.AllowedIPs, pfx)
		}
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", k, err)
		}
	}
	finish()
	return peers, sc.Err()
}

// deviceLogger bridges wireguard-go's printf logger to slog, at debug level:
// wireguard-go's "errors" are mostly transient (a peer went away, a send
// failed) and the caller surfaces what matters through Peers.
func deviceLogger(l *slog.Logger) *device.Logger {
	ctx := context.Background()
	logf := func(level string) func(string, ...any) {
		return func(format string, args ...any) {
			if l.Enabled(ctx, slog.LevelDebug) {
				l.Debug(fmt.Sprintf(format, args...), "component", "wireguard-go", "wg_level", level)
			}
		}
	}
	return &device.Logger{Verbosef: logf("verbose"), Errorf: logf("error")}
}
