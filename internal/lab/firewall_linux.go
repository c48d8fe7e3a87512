package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
)

// Both routers run the same rule set: a NAT on the WAN and a stateful
// firewall that lets in only what answers the LAN or the router
// (ESTABLISHED,RELATED) and drops every NEW connection from the WAN, to the
// LAN or to the router itself.
//
// Counters are read from rules tagged with these comments. The accepted-new
// rule sits in the nat table, which sees only the first packet of each
// connection, after the filter table has let it through: to the router
// (nat INPUT) or forwarded to the LAN (nat POSTROUTING, recognised by the
// mark set on every packet that came in on the WAN).
const (
	commentDropNew     = "kh-drop-new"
	commentAcceptedNew = "kh-accepted-new"
	commentBlockedUDP  = "kh-blocked-udp"
	wanMark            = "0x4b48"
)

// routerRules returns the iptables-restore input for a router.
func routerRules(n NAT) string {
	return `*mangle
-A PREROUTING -i ` + wanIf + ` -j MARK --set-mark ` + wanMark + `
COMMIT
*nat
:KH-NAT - [0:0]
:KH-WAN-NEW - [0:0]
-A INPUT -i ` + wanIf + ` -j KH-WAN-NEW
-A POSTROUTING -m mark --mark ` + wanMark + ` -j KH-WAN-NEW
-A POSTROUTING -o ` + wanIf + ` -j KH-NAT
-A KH-WAN-NEW -m comment --comment ` + commentAcceptedNew + ` -j RETURN
` + natRules(n) + `COMMIT
*filter
:KH-WAN-IN - [0:0]
:KH-LAN-OUT - [0:0]
-A INPUT -i ` + wanIf + ` -j KH-WAN-IN
-A FORWARD -i ` + wanIf + ` -j KH-WAN-IN
-A FORWARD -i ` + lanIf + ` -o ` + wanIf + ` -j KH-LAN-OUT
-A KH-WAN-IN -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A KH-WAN-IN -m conntrack --ctstate NEW -m comment --comment ` + commentDropNew + ` -j DROP
-A KH-WAN-IN -j DROP
` + filterRules(n) + `COMMIT
`
}

// natRules returns the KH-NAT chain's rules for n.
func natRules(n NAT) string {
	if n.Mode == Symmetric {
		return "-A KH-NAT -j MASQUERADE --random-fully\n"
	}
	return "-A KH-NAT -j MASQUERADE\n"
}

// filterRules returns the KH-LAN-OUT chain's rules for n.
func filterRules(n NAT) string {
	if !n.BlockUDPExceptTo.IsValid() {
		return ""
	}
	return "-A KH-LAN-OUT -p udp ! -d " + n.BlockUDPExceptTo.String() +
		" -m comment --comment " + commentBlockedUDP + " -j DROP\n"
}

// SetNAT switches router (Home or Site) to n while the lab runs: it replaces
// the NAT and UDP-blocking rules and flushes the router's connection
// tracking table, so existing flows are mapped afresh. Counters keep
// counting. If the conntrack tool is missing, the rules are still replaced
// but flows already tracked keep their old mapping, and SetNAT returns an
// error wrapping exec.ErrNotFound.
func (l *Lab) SetNAT(ctx context.Context, router string, n NAT) error {
	if router != Home && router != Site {
		return fmt.Errorf("lab: %q is not a router", router)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	rules := "*nat\n-F KH-NAT\n" + natRules(n) + "COMMIT\n*filter\n-F KH-LAN-OUT\n" + filterRules(n) + "COMMIT\n"
	if _, err := runInput(ctx, []byte(rules), "ip", "netns", "exec", l.Namespace(router), "iptables-restore", "--noflush"); err != nil {
		return fmt.Errorf("lab: set %s NAT: %w", router, err)
	}
	l.nat[router] = n
	if _, err := exec.LookPath("conntrack"); err != nil {
		return fmt.Errorf("lab: set %s NAT: cannot flush conntrack, old flows keep their mapping: %w", router, err)
	}
	if _, err := l.Exec(ctx, router, "conntrack", "-F"); err != nil {
		return fmt.Errorf("lab: set %s NAT: %w", router, err)
	}
	return nil
}

// Counters are a router's firewall counters, in packets, since the lab was
// built.
type Counters struct {
	// DroppedNew counts packets of NEW connections from the WAN that the
	// firewall dropped (to the router or to the LAN). TCP retransmits
	// count again.
	DroppedNew uint64
	// AcceptedNew counts connections from the WAN that got through the
	// firewall. It stays zero unless a test opens a port.
	AcceptedNew uint64
	// BlockedUDP counts LAN UDP packets dropped by NAT.BlockUDPExceptTo.
	BlockedUDP uint64
}

// Counters reads router's (Home or Site) firewall counters.
func (l *Lab) Counters(ctx context.Context, router string) (Counters, error) {
	if router != Home && router != Site {
		return Counters{}, fmt.Errorf("lab: %q is not a router", router)
	}
	var c Counters
	for _, q := range []struct {
		table, chain, comment string
		dst                   *uint64
		optional              bool // the rule exists only in some modes
	}{
		{"filter", "KH-WAN-IN", commentDropNew, &c.DroppedNew, false},
		{"nat", "KH-WAN-NEW", commentAcceptedNew, &c.AcceptedNew, false},
		{"filter", "KH-LAN-OUT", commentBlockedUDP, &c.BlockedUDP, true},
	} {
		out, err := l.Exec(ctx, router, "iptables", "-t", q.table, "-L", q.chain, "-v", "-x", "-n")
		if err != nil {
			return Counters{}, fmt.Errorf("lab: counters of %s: %w", router, err)
		}
		n, err := packetCount(string(out), q.comment)
		if err != nil && !(q.optional && errors.Is(err, errNoRule)) {
			return Counters{}, fmt.Errorf("lab: counters of %s: %w", router, err)
		}
		*q.dst = n
	}
	return c, nil
}

// errNoRule is returned by packetCount when no rule carries the comment.
var errNoRule = errors.New("no rule with that comment")

// packetCount returns the packet counter of the rule tagged with comment in
// the output of "iptables -L CHAIN -v -x -n".
func packetCount(listing, comment string) (uint64, error) {
	for _, line := range strings.Split(listing, "\n") {
		if !strings.Contains(line, "/* "+comment+" */") {
			continue
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			break
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("rule %s: %w", comment, err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("%s: %w", comment, errNoRule)
}

// ForwardUDP opens an inbound UDP port on router's WAN address and forwards
// it to dst on the LAN, the way a site admin would for a peer that cannot
// punch through NAT (a stock WireGuard client of an exported config).
// Keyhole itself never needs it.
func (l *Lab) ForwardUDP(ctx context.Context, router string, port uint16, dst netip.AddrPort) error {
	ns := l.Namespace(router)
	if router != Home && router != Site {
		return fmt.Errorf("lab: %q is not a router", router)
	}
	p := fmt.Sprint(port)
	for _, args := range [][]string{
		{"-t", "nat", "-I", "PREROUTING", "-i", wanIf, "-p", "udp", "--dport", p, "-j", "DNAT", "--to-destination", dst.String()},
		{"-I", "KH-WAN-IN", "1", "-p", "udp", "-d", dst.Addr().String(), "--dport", fmt.Sprint(dst.Port()), "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"},
	} {
		if _, err := run(ctx, append([]string{"ip", "netns", "exec", ns, "iptables"}, args...)...); err != nil {
			return fmt.Errorf("lab: forward %s udp/%d to %s: %w", router, port, dst, err)
		}
	}
	return nil
}
