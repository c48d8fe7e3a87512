package posture

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strings"

	"github.com/keyhole-net/keyhole/internal/api"
)

// maxChainDepth bounds how deep the firewall decision follows jumps from
// an input chain (the kernel itself allows 16 levels of jumps with
// iptables-legacy, and rejects loops with nftables).
const maxChainDepth = 64

// ruleset is what the firewall decision needs from one netfilter rule
// source: its chains, with only the verdicts of their rules.
type ruleset struct {
	source string // "nftables", "iptables-legacy", "ip6tables-legacy"
	// absent, when set, says why the source has no rules at all ("not
	// loaded"); chains is then empty.
	absent string
	chains []fwChain
}

// fwChain is one chain of a ruleset.
type fwChain struct {
	family string // nftables family ("ip", "ip6", "inet"); "" for legacy
	table  string
	name   string
	// input is set for a base chain on the input hook, through which
	// every packet for this host passes.
	input      bool
	policyDrop bool
	rules      []fwRule
}

// fwRule is what a rule can do to a packet, whatever it matches.
type fwRule struct {
	drops bool     // it drops or rejects
	jumps []string // chains of the same table it jumps or goes to
	// unknown, when set, says why what the rule does could not be read
	// (a verdict map that cannot be listed).
	unknown string
}

func (c fwChain) String() string {
	if c.family == "" {
		return c.table + " " + c.name
	}
	return c.family + " " + c.table + " " + c.name
}

// inputFilter decides whether rs filters incoming traffic: Yes when a
// chain on the input hook drops by policy, or a rule in it or in a chain
// it jumps to drops or rejects; Unknown when that cannot be ruled out
// because a rule on the way could not be read; No otherwise. It does not
// judge what the rules match: a single drop rule is a filter.
func inputFilter(rs ruleset) (api.Fact, string) {
	if rs.absent != "" {
		return api.No, rs.source + ": " + rs.absent
	}
	type key struct{ family, table, name string }
	byName := make(map[key]*fwChain, len(rs.chains))
	for i := range rs.chains {
		ch := &rs.chains[i]
		byName[key{ch.family, ch.table, ch.name}] = ch
	}
	var unknown string
	inputs := 0
	for i := range rs.chains {
		base := &rs.chains[i]
		if !base.input {
			continue
		}
		inputs++
		if base.policyDrop {
			return api.Yes, fmt.Sprintf("%s chain %s drops by default (policy drop)", rs.source, base)
		}
		// Depth-first through the chains reachable from base.
		type visit struct {
			ch    *fwChain
			depth int
		}
		seen := map[*fwChain]bool{base: true}
		stack := []visit{{base, 0}}
		for len(stack) > 0 {
			v := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			for _, r := range v.ch.rules {
				if r.drops {
					where := ""
					if v.ch != base {
						where = " in " + v.ch.name
					}
					return api.Yes, fmt.Sprintf("%s chain %s drops or rejects by rule%s", rs.source, base, where)
				}
				if r.unknown != "" && unknown == "" {
					unknown = fmt.Sprintf("%s chain %s: %s", rs.source, v.ch, r.unknown)
				}
				for _, j := range r.jumps {
					next, ok := byName[key{v.ch.family, v.ch.table, j}]
					switch {
					case !ok:
						if unknown == "" {
							unknown = fmt.Sprintf("%s chain %s jumps to %s, which was not read", rs.source, v.ch, j)
						}
					case v.depth+1 > maxChainDepth:
						if unknown == "" {
							unknown = fmt.Sprintf("%s chain %s: jumps nest deeper than %d", rs.source, base, maxChainDepth)
						}
					case !seen[next]:
						seen[next] = true
						stack = append(stack, visit{next, v.depth + 1})
					}
				}
			}
		}
	}
	if unknown != "" {
		return api.Unknown, unknown
	}
	if inputs == 0 {
		return api.No, rs.source + ": no chain on the input hook"
	}
	return api.No, fmt.Sprintf("%s: no chain on the input hook drops or rejects (%d input chains)", rs.source, inputs)
}

// firewallFact combines what each rule source says: any filter is a
// firewall; otherwise a source that could not be read makes it unknown.
func firewallFact(facts []api.Fact, details []string) (api.Fact, string) {
	var yes, unknown []string
	for i, f := range facts {
		switch f {
		case api.Yes:
			yes = append(yes, details[i])
		case api.Unknown:
			unknown = append(unknown, details[i])
		}
	}
	switch {
	case len(yes) > 0:
		return api.Yes, strings.Join(yes, "; ")
	case len(unknown) > 0:
		return api.Unknown, strings.Join(unknown, "; ")
	}
	return api.No, strings.Join(details, "; ")
}

// firewall reports whether netfilter filters incoming traffic, reading
// nftables (which iptables-nft writes too) and, when loaded, the legacy
// iptables tables. It reads the network namespace of the calling thread.
func (c *collector) firewall(ctx context.Context) (api.Fact, string) {
	var facts []api.Fact
	var details []string
	add := func(rs ruleset, err error) {
		if err != nil {
			facts, details = append(facts, api.Unknown), append(details, err.Error())
			return
		}
		f, d := inputFilter(rs)
		facts, details = append(facts, f), append(details, d)
	}
	add(readNftables())
	add(c.readLegacy(ctx, "iptables-legacy", "ip_tables_names"))
	add(c.readLegacy(ctx, "ip6tables-legacy", "ip6_tables_names"))
	return firewallFact(facts, details)
}

// readLegacy reads the filter table of legacy iptables (or ip6tables),
// when the kernel has it loaded: names is its /proc/net file listing the
// loaded tables, which exists only while the legacy module is loaded.
func (c *collector) readLegacy(ctx context.Context, source, names string) (ruleset, error) {
	rs := ruleset{source: source}
	netDir := "/proc/thread-self/net/"
	if _, err := os.Stat(c.path("/proc/thread-self")); err != nil {
		netDir = "/proc/self/net/" // kernels before 3.17
	}
	data, err := readCapped(c.path(netDir+names), maxSysAttrBytes)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		rs.absent = "not loaded"
		return rs, nil
	case err != nil:
		return rs, fmt.Errorf("%s: cannot read /proc/net/%s: %s%s", source, names, errText(err), needsAdmin(err))
	}
	if !hasLine(string(data), "filter") {
		rs.absent = "no filter table"
		return rs, nil
	}
	out, err := c.listLegacy(ctx, source)
	if err != nil {
		return rs, fmt.Errorf("%s: the filter table is loaded but cannot be listed: %w", source, err)
	}
	rs.chains, err = parseIptablesSave(string(out), "filter")
	if err != nil {
		return rs, fmt.Errorf("%s: cannot parse its -S output: %w", source, err)
	}
	return rs, nil
}

// listLegacy lists the legacy filter table with iptables-legacy (or
// ip6tables-legacy), or with iptables itself on systems older than its
// nf_tables variant.
func (c *collector) listLegacy(ctx context.Context, source string) ([]byte, error) {
	list := func(bin string) ([]byte, error) {
		return c.output(ctx, tool{argv: []string{bin, "-w", "2", "-t", "filter", "-S"}})
	}
	out, err := list(source)
	if !errors.Is(err, exec.ErrNotFound) {
		return out, err
	}
	plain := strings.TrimSuffix(source, "-legacy")
	v, err := c.output(ctx, tool{argv: []string{plain, "-V"}})
	switch {
	case errors.Is(err, exec.ErrNotFound):
		return nil, fmt.Errorf("neither %s nor %s is installed", source, plain)
	case err != nil:
		return nil, err
	case strings.Contains(string(v), "nf_tables"):
		return nil, fmt.Errorf("%s is not installed, and %s is the nf_tables variant", source, plain)
	}
	return list(plain)
}

// needsAdmin adds a hint to a permission error.
func needsAdmin(err error) string {
	if errors.Is(err, fs.ErrPermission) || strings.Contains(err.Error(), "operation not permitted") {
		return " (reading the firewall needs root or CAP_NET_ADMIN)"
	}
	return ""
}

func hasLine(s, want string) bool {
	for line := range strings.SplitSeq(s, "\n") {
		if strings.TrimSpace(line) == want {
			return true
		}
	}
	return false
}

// parseIptablesSave parses the output of "iptables -S" for one table:
//
//	-P INPUT DROP
//	-N ufw-before-input
//	-A INPUT -j ufw-before-input
//	-A ufw-before-input -p tcp -m comment --comment "a -j DROP" -j REJECT
//
// and returns its chains, INPUT marked as the input chain.
func parseIptablesSave(out, table string) ([]fwChain, error) {
	var chains []fwChain
	index := make(map[string]int)
	chain := func(name string) *fwChain {
		i, ok := index[name]
		if !ok {
			i = len(chains)
			index[name] = i
			chains = append(chains, fwChain{table: table, name: name, input: name == "INPUT"})
		}
		return &chains[i]
	}
	type rule struct {
		chain, target string
	}
	var rules []rule
	for n, line := range strings.Split(out, "\n") {
		args, err := splitIptablesArgs(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n+1, err)
		}
		if len(args) == 0 {
			continue
		}
		switch args[0] {
		case "-P":
			if len(args) != 3 {
				return nil, fmt.Errorf("line %d: want -P CHAIN POLICY", n+1)
			}
			chain(args[1]).policyDrop = args[2] == "DROP"
		case "-N":
			if len(args) != 2 {
				return nil, fmt.Errorf("line %d: want -N CHAIN", n+1)
			}
			chain(args[1])
		case "-A":
			if len(args) < 2 {
				return nil, fmt.Errorf("line %d: want -A CHAIN and a rule", n+1)
			}
			r := rule{chain: args[1]}
			for i := 2; i+1 < len(args); i++ {
				if args[i] == "-j" || args[i] == "--jump" || args[i] == "-g" || args[i] == "--goto" {
					r.target = args[i+1]
				}
			}
			chain(args[1])
			rules = append(rules, r)
		default:
			return nil, fmt.Errorf("line %d: unexpected %q", n+1, args[0])
		}
	}
	// A target is a jump when it names a chain of the table; DROP and
	// REJECT drop; any other target (ACCEPT, LOG, MARK...) is an
	// extension that does not drop.
	for _, r := range rules {
		var fr fwRule
		_, isChain := index[r.target]
		switch {
		case r.target == "DROP" || r.target == "REJECT":
			fr.drops = true
		case isChain:
			fr.jumps = []string{r.target}
		}
		c := &chains[index[r.chain]]
		c.rules = append(c.rules, fr)
	}
	return chains, nil
}

// splitIptablesArgs splits a line of iptables -S output into arguments:
// separated by spaces, with double quotes around an argument that has
// spaces and backslash escaping a quote or backslash within.
func splitIptablesArgs(line string) ([]string, error) {
	var args []string
	var cur strings.Builder
	inArg, quoted := false, false
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case quoted && ch == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case quoted && ch == '"':
			quoted = false
		case quoted:
			cur.WriteByte(ch)
		case ch == '"':
			quoted, inArg = true, true
		case ch == ' ' || ch == '\t' || ch == '\r':
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(ch)
			inArg = true
		}
	}
	if quoted {
		return nil, errors.New("unclosed quote")
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args, nil
}
