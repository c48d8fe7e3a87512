package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/wg"
)

// ipForwardPath is the IPv4 forwarding switch of the gateway's network
// namespace.
const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// kernelConfig configures the TUN mode's data plane.
type kernelConfig struct {
	Name        string // TUN interface name
	PrivateKey  key.WGPrivate
	Address     netip.Addr // the gateway's overlay address
	MTU         int
	ListenPort  uint16
	ClientRange netip.Prefix // routed into the TUN
	Filter      wg.PacketFilter
	// Resolve finds the site address of an app's host name.
	Resolve func(ctx context.Context, host string) (netip.Addr, error)
	Logger  *slog.Logger
}

// kernelPlane is the gateway's TUN mode: wireguard-go on a kernel TUN
// device, the packet filter on its receive path, and the kernel forwarding
// and NATing what the filter lets through, configured with nftables in a
// table of its own.
type kernelPlane struct {
	*wg.TUN
	log     *slog.Logger
	resolve func(ctx context.Context, host string) (netip.Addr, error)
	ifname  string
	table   *nftables.Table
	dnat    *nftables.Set

	syncMu sync.Mutex                // serialises sync; guards mapped, hosts
	mapped map[netip.Addr]netip.Addr // virtual address → site address, as in dnat; nil: unknown
	hosts  map[string]resolvedHost

	mu    sync.Mutex // guards sweep
	sweep map[netip.Addr]struct{}
}

// resolvedHost is a cached resolution of an app's host name.
type resolvedHost struct {
	addr    netip.Addr
	expires time.Time
}

// hostCacheTTL is how long a resolved app host is used before it is
// resolved again (by the periodic sync; new grants use the cache).
const hostCacheTTL = 60 * time.Second

// resolveTimeout bounds one host resolution.
const resolveTimeout = 2 * time.Second

// unresolvedRetry is how long a host that did not resolve is not tried
// again on the grant path (the periodic sync retries it sooner).
const unresolvedRetry = 5 * time.Second

// tableName is the nftables table of the TUN gateway with interface
// ifname: recognisably ours, one per gateway.
func tableName(ifname string) string {
	var b strings.Builder
	b.WriteString("keyhole_gw_")
	for _, r := range ifname {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// newKernelPlane deletes what a crashed gateway may have left, creates
// the TUN, turns IPv4 forwarding on, and installs the nftables table and
// the client route.
func newKernelPlane(cfg kernelConfig) (*kernelPlane, error) {
	name := cfg.Name
	if name == "" {
		name = DefaultTUNName
	}
	k := &kernelPlane{
		log: cfg.Logger, resolve: cfg.Resolve, ifname: name,
		table:  &nftables.Table{Family: nftables.TableFamilyIPv4, Name: tableName(name)},
		mapped: make(map[netip.Addr]netip.Addr),
		hosts:  make(map[string]resolvedHost),
		sweep:  make(map[netip.Addr]struct{}),
	}
	if err := k.deleteTable(); err != nil {
		return nil, fmt.Errorf("tun mode: remove leftover nftables table %s: %w", k.table.Name, err)
	}
	t, err := wg.NewTUN(wg.TUNConfig{
		Name: name, PrivateKey: cfg.PrivateKey, Address: cfg.Address, MTU: cfg.MTU,
		ListenPort: cfg.ListenPort, Logger: cfg.Logger.With("component", "wireguard"), Filter: cfg.Filter,
	})
	if err != nil {
		return nil, fmt.Errorf("tun mode: %w", err)
	}
	k.TUN = t
	k.ifname = t.Name()
	if err := k.enableForwarding(); err != nil {
		k.Close()
		return nil, err
	}
	if err := k.installTable(cfg.ClientRange); err != nil {
		k.Close()
		return nil, fmt.Errorf("tun mode: nftables table %s: %w", k.table.Name, err)
	}
	if _, err := t.SetRoutes([]netip.Prefix{cfg.ClientRange}); err != nil {
		k.Close()
		return nil, fmt.Errorf("tun mode: %w", err)
	}
	k.log.Info("tun mode up: the kernel forwards granted packets to the site", "interface", k.ifname,
		"nftables_table", "ip "+k.table.Name, "client_route", cfg.ClientRange)
	return k, nil
}

// enableForwarding turns on IPv4 forwarding in this network namespace.
// It stays on after the gateway exits: other software may rely on it.
func (k *kernelPlane) enableForwarding() error {
	b, err := os.ReadFile(ipForwardPath)
	if err != nil {
		return fmt.Errorf("tun mode: read %s: %w", ipForwardPath, err)
	}
	if strings.TrimSpace(string(b)) == "1" {
		k.log.Info("net.ipv4.ip_forward is already on in this network namespace")
		return nil
	}
	if err := os.WriteFile(ipForwardPath, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("tun mode: enable IPv4 forwarding (%s): %w", ipForwardPath, err)
	}
	k.log.Info("enabled net.ipv4.ip_forward in this network namespace (left on at exit)")
	return nil
}

// deleteTable removes the table if it exists.
func (k *kernelPlane) deleteTable() error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return err
	}
	for _, t := range tables {
		if t.Name == k.table.Name {
			c.DelTable(k.table)
			return c.Flush()
		}
	}
	return nil
}

// ifnameData is an interface name as nftables compares it.
func ifnameData(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// installTable creates the table:
//
//	table ip keyhole_gw_NAME {
//	  map app_addrs { type ipv4_addr : ipv4_addr }
//	  chain prerouting { type nat hook prerouting priority dstnat
//	    iifname NAME dnat ip to ip daddr map @app_addrs }
//	  chain postrouting { type nat hook postrouting priority srcnat
//	    oifname != NAME ip saddr CLIENTS masquerade }
//	  chain forward { type filter hook forward priority filter
//	    oifname NAME ct state established,related accept
//	    oifname NAME drop
//	    iifname NAME accept }
//	}
func (k *kernelPlane) installTable(clients netip.Prefix) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	tbl := c.AddTable(k.table)
	k.dnat = &nftables.Set{Table: tbl, Name: "app_addrs", IsMap: true, KeyType: nftables.TypeIPAddr, DataType: nftables.TypeIPAddr}
	if err := c.AddSet(k.dnat, nil); err != nil {
		return err
	}
	accept := nftables.ChainPolicyAccept
	pre := c.AddChain(&nftables.Chain{Name: "prerouting", Table: tbl, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: tbl, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: tbl, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	ifn := ifnameData(k.ifname)
	c.AddRule(&nftables.Rule{Table: tbl, Chain: pre, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifn},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: k.dnat.Name, SetID: k.dnat.ID},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegAddrMax: 1},
	}})
	masked := clients.Masked()
	mask := net.CIDRMask(masked.Bits(), 32)
	c.AddRule(&nftables.Rule{Table: tbl, Chain: post, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifn},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: masked.Addr().AsSlice()},
		&expr.Masq{},
	}})
	c.AddRule(&nftables.Rule{Table: tbl, Chain: fwd, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifn},
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}})
	c.AddRule(&nftables.Rule{Table: tbl, Chain: fwd, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifn},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}})
	c.AddRule(&nftables.Rule{Table: tbl, Chain: fwd, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifn},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}})
	return c.Flush()
}

// noteRemoved marks a client whose grants shrank: the next sync deletes
// its conntrack entries the filter no longer allows. Called by the grant
// table's observer, under the table's lock.
func (k *kernelPlane) noteRemoved(client netip.Addr) {
	k.mu.Lock()
	k.sweep[client.Unmap()] = struct{}{}
	k.mu.Unlock()
}

// sync makes the DNAT map hold exactly the virtual addresses of gs's
// named targets, resolving their hosts (cached), and deletes the
// conntrack entries of clients that lost a grant and that allows no
// longer covers, so the app's next packet on such a flow meets a RST.
// Hosts are resolved without holding syncMu, so a slow resolver on the
// periodic sync does not hold up a grant's. It returns the first error;
// what it could do is done.
func (k *kernelPlane) sync(ctx context.Context, gs []api.GatewayGrant, allows func(src, dst netip.Addr, proto uint8, port uint16) bool, refresh bool) error {
	errs := []error{k.sweepConntrack(allows)}
	virtHost := make(map[netip.Addr]string)
	for _, g := range gs {
		for _, t := range g.Targets {
			if t.Host != "" && t.Prefix.Addr().Unmap().Is4() && t.Prefix.Bits() == 32 {
				virtHost[t.Prefix.Addr().Unmap()] = strings.ToLower(t.Host)
			}
		}
	}
	k.syncMu.Lock()
	todo := make(map[string]bool) // host → seen before
	for _, h := range virtHost {
		if c, ok := k.hosts[h]; k.stale(c, ok, refresh) {
			todo[h] = ok
		}
	}
	k.syncMu.Unlock()
	found := make(map[string]netip.Addr, len(todo))
	failed := make(map[string]error)
	for h := range todo {
		rctx, cancel := context.WithTimeout(ctx, resolveTimeout)
		a, err := k.resolve(rctx, h)
		cancel()
		if err != nil {
			failed[h] = err
			continue
		}
		found[h] = a
	}

	k.syncMu.Lock()
	defer k.syncMu.Unlock()
	now := time.Now()
	for h, a := range found {
		k.hosts[h] = resolvedHost{addr: a, expires: now.Add(hostCacheTTL)}
	}
	for h, err := range failed {
		if c := k.hosts[h]; c.addr.IsValid() {
			continue // keep the last good answer
		}
		k.hosts[h] = resolvedHost{expires: now.Add(unresolvedRetry)}
		if !todo[h] {
			errs = append(errs, fmt.Errorf("resolve app host %s (retrying every %v): %w", h, kernelRetry, err))
		}
	}
	want := make(map[netip.Addr]netip.Addr)
	for virt, h := range virtHost {
		if c := k.hosts[h]; c.addr.IsValid() {
			want[virt] = c.addr
		} else if old, ok := k.mapped[virt]; ok {
			want[virt] = old // keep what worked
		}
	}
	named := make(map[string]bool, len(virtHost))
	for _, h := range virtHost {
		named[h] = true
	}
	for h := range k.hosts {
		if !named[h] {
			delete(k.hosts, h) // no grant names it any more
		}
	}
	if k.mapped == nil {
		// A failed update left the map unknown: rewrite it whole.
		c, err := nftables.New()
		if err != nil {
			return errors.Join(append(errs, fmt.Errorf("rewrite DNAT map: %w", err))...)
		}
		c.FlushSet(k.dnat)
		if err := c.Flush(); err != nil {
			return errors.Join(append(errs, fmt.Errorf("rewrite DNAT map: %w", err))...)
		}
		k.mapped = make(map[netip.Addr]netip.Addr)
	}
	var add, del []nftables.SetElement
	for virt, real := range want {
		if old, ok := k.mapped[virt]; ok && old == real {
			continue
		} else if ok {
			del = append(del, nftables.SetElement{Key: virt.AsSlice()})
		}
		add = append(add, nftables.SetElement{Key: virt.AsSlice(), Val: real.AsSlice()})
	}
	for virt := range k.mapped {
		if _, ok := want[virt]; !ok {
			del = append(del, nftables.SetElement{Key: virt.AsSlice()})
		}
	}
	if len(add)+len(del) == 0 {
		return errors.Join(errs...)
	}
	c, err := nftables.New()
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("update DNAT map: %w", err))...)
	}
	if len(del) > 0 {
		if err := c.SetDeleteElements(k.dnat, del); err != nil {
			return errors.Join(append(errs, fmt.Errorf("update DNAT map: %w", err))...)
		}
	}
	if len(add) > 0 {
		if err := c.SetAddElements(k.dnat, add); err != nil {
			return errors.Join(append(errs, fmt.Errorf("update DNAT map: %w", err))...)
		}
	}
	if err := c.Flush(); err != nil {
		// The map is now unknown: the next sync rewrites it whole.
		k.mapped = nil
		return errors.Join(append(errs, fmt.Errorf("update DNAT map: %w", err))...)
	}
	for virt, real := range want {
		if k.mapped[virt] != real {
			k.log.Debug("app address mapped", "virtual_ip", virt, "address", real)
		}
	}
	k.mapped = want
	return errors.Join(errs...)
}

// stale reports whether cache entry c (ok: there is one) must be
// resolved: none yet; a good answer past its TTL when refresh asks; a
// failed one past its retry time, or at once when refresh asks.
func (k *kernelPlane) stale(c resolvedHost, ok, refresh bool) bool {
	switch {
	case !ok:
		return true
	case c.addr.IsValid():
		return refresh && !time.Now().Before(c.expires)
	}
	return refresh || !time.Now().Before(c.expires)
}

// unresolved reports whether some app host is waiting to be resolved.
func (k *kernelPlane) unresolved() bool {
	k.syncMu.Lock()
	defer k.syncMu.Unlock()
	for _, c := range k.hosts {
		if !c.addr.IsValid() {
			return true
		}
	}
	return false
}

// sweepConntrack deletes the tracked flows of clients marked by
// noteRemoved that allows no longer covers.
func (k *kernelPlane) sweepConntrack(allows func(src, dst netip.Addr, proto uint8, port uint16) bool) error {
	k.mu.Lock()
	if len(k.sweep) == 0 {
		k.mu.Unlock()
		return nil
	}
	clients := k.sweep
	k.sweep = make(map[netip.Addr]struct{})
	k.mu.Unlock()
	n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, netlink.FAMILY_V4, revokedFlows{clients: clients, allows: allows})
	if err != nil {
		return fmt.Errorf("delete revoked flows from conntrack: %w", err)
	}
	if n > 0 {
		k.log.Info("revoked flows removed from conntrack", "flows", n, "clients", len(clients))
	}
	return nil
}

// revokedFlows matches conntrack entries from the given clients that the
// filter no longer allows.
type revokedFlows struct {
	clients map[netip.Addr]struct{}
	allows  func(src, dst netip.Addr, proto uint8, port uint16) bool
}

// MatchConntrackFlow implements netlink.CustomConntrackFilter.
func (r revokedFlows) MatchConntrackFlow(f *netlink.ConntrackFlow) bool {
	src, ok := netip.AddrFromSlice(f.Forward.SrcIP)
	if !ok {
		return false
	}
	if _, ok := r.clients[src.Unmap()]; !ok {
		return false
	}
	dst, ok := netip.AddrFromSlice(f.Forward.DstIP)
	if !ok {
		return false
	}
	return !r.allows(src, dst, f.Forward.Protocol, f.Forward.DstPort)
}

// Close deletes the nftables table and the TUN (with its route).
func (k *kernelPlane) Close() error {
	var errs []error
	if err := k.deleteTable(); err != nil {
		errs = append(errs, fmt.Errorf("tun mode: delete nftables table %s: %w", k.table.Name, err))
	}
	if k.TUN != nil {
		if err := k.TUN.Close(); err != nil {
			errs = append(errs, fmt.Errorf("tun mode: %w", err))
		}
	}
	return errors.Join(errs...)
}
