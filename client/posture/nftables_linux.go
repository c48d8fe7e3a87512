package posture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// maxNftChains caps the chains whose rules are read: those on the input
// hook and those reachable from them. A host with a firewall this large
// (thousands of per-service chains) is Unknown rather than read for long.
const maxNftChains = 2048

// readNftables reads the chains on the input hook of the ip, ip6 and inet
// tables, and the chains they jump to, from the kernel over netlink, in
// the network namespace of the calling thread.
func readNftables() (ruleset, error) {
	rs := ruleset{source: "nftables"}
	fail := func(what string, err error) (ruleset, error) {
		return rs, fmt.Errorf("nftables: cannot %s: %w%s", what, err, needsAdmin(err))
	}
	// Not a lasting connection: each request opens its own socket and
	// closes it, so nothing is left open on any return.
	conn, err := nftables.New()
	if err != nil {
		return fail("open netlink", err)
	}
	all, err := conn.ListChains()
	if err != nil {
		return fail("list chains", err)
	}
	type key struct {
		family nftables.TableFamily
		table  string
		name   string
	}
	byName := make(map[key]*nftables.Chain)
	var queue []*nftables.Chain
	for _, ch := range all {
		if ch.Table == nil || !inetFamily(ch.Table.Family) {
			continue
		}
		byName[key{ch.Table.Family, ch.Table.Name, ch.Name}] = ch
		if ch.Hooknum != nil && *ch.Hooknum == *nftables.ChainHookInput {
			queue = append(queue, ch)
		}
	}
	queued := make(map[*nftables.Chain]bool, len(queue))
	for _, ch := range queue {
		queued[ch] = true
	}
	for i := 0; i < len(queue); i++ {
		ch := queue[i]
		fc := fwChain{
			family:     familyName(ch.Table.Family),
			table:      ch.Table.Name,
			name:       ch.Name,
			input:      ch.Hooknum != nil && *ch.Hooknum == *nftables.ChainHookInput,
			policyDrop: ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop,
		}
		if i >= maxNftChains {
			fc.rules = []fwRule{{unknown: fmt.Sprintf("not read: this client reads at most %d chains", maxNftChains)}}
			rs.chains = append(rs.chains, fc)
			continue
		}
		rules, err := conn.GetRules(ch.Table, ch)
		if err != nil {
			return fail("list the rules of chain "+fc.String(), err)
		}
		for _, r := range rules {
			fr := summarizeNftRule(conn, ch.Table, r.Exprs)
			for _, j := range fr.jumps {
				next, ok := byName[key{ch.Table.Family, ch.Table.Name, j}]
				if ok && !queued[next] {
					queued[next] = true
					queue = append(queue, next)
				}
			}
			fc.rules = append(fc.rules, fr)
		}
		rs.chains = append(rs.chains, fc)
	}
	return rs, nil
}

// summarizeNftRule says what a rule's expressions can do to a packet:
// drop (a drop verdict, a reject, iptables-nft's REJECT target), jump,
// or, through a verdict map, whatever the map's elements say.
func summarizeNftRule(conn *nftables.Conn, t *nftables.Table, exprs []expr.Any) fwRule {
	var r fwRule
	verdict := func(v *expr.Verdict) {
		switch v.Kind {
		case expr.VerdictDrop:
			r.drops = true
		case expr.VerdictJump, expr.VerdictGoto:
			r.jumps = append(r.jumps, v.Chain)
		}
	}
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Verdict:
			verdict(e)
		case *expr.Reject:
			r.drops = true
		case *expr.Target:
			if e.Name == "REJECT" || e.Name == "DROP" {
				r.drops = true
			}
		case *expr.Lookup:
			if !e.IsDestRegSet || e.DestRegister != unix.NFT_REG_VERDICT {
				continue // a set lookup, which only matches
			}
			set, err := conn.GetSetByName(t, e.SetName)
			if err != nil {
				r.unknown = fmt.Sprintf("cannot read verdict map %s: %v", e.SetName, err)
				continue
			}
			elems, err := conn.GetSetElements(set)
			if err != nil {
				r.unknown = fmt.Sprintf("cannot read verdict map %s: %v", e.SetName, err)
				continue
			}
			for _, el := range elems {
				v := el.VerdictData
				if v == nil {
					// This library leaves the verdicts of anonymous
					// maps undecoded, in Val.
					if v, err = decodeVerdict(el.Val); err != nil {
						r.unknown = fmt.Sprintf("cannot read verdict map %s: %v", e.SetName, err)
						break
					}
				}
				verdict(v)
			}
		}
	}
	return r
}

// decodeVerdict decodes the netlink attributes of a verdict
// (NFTA_DATA_VERDICT's content): a code (NFTA_VERDICT_CODE, big-endian),
// and a chain (NFTA_VERDICT_CHAIN) for a jump or goto.
func decodeVerdict(b []byte) (*expr.Verdict, error) {
	var v expr.Verdict
	haveCode := false
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, errors.New("truncated attribute")
		}
		n := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if n < 4 || n > len(b) {
			return nil, fmt.Errorf("bad attribute length %d", n)
		}
		val := b[4:n]
		switch typ {
		case unix.NFTA_VERDICT_CODE:
			if len(val) != 4 {
				return nil, fmt.Errorf("verdict code of %d bytes", len(val))
			}
			v.Kind = expr.VerdictKind(int32(binary.BigEndian.Uint32(val)))
			haveCode = true
		case unix.NFTA_VERDICT_CHAIN:
			v.Chain = strings.TrimRight(string(val), "\x00")
		}
		// Attributes are padded to 4 bytes.
		n = (n + 3) &^ 3
		if n > len(b) {
			n = len(b)
		}
		b = b[n:]
	}
	if !haveCode {
		return nil, errors.New("no verdict code")
	}
	return &v, nil
}

func inetFamily(f nftables.TableFamily) bool {
	return f == nftables.TableFamilyIPv4 || f == nftables.TableFamilyIPv6 || f == nftables.TableFamilyINet
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyINet:
		return "inet"
	}
	return fmt.Sprintf("family-%d", f)
}
