package posture

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os/exec"
	"reflect"
	"strings"
	"testing"

	"github.com/google/nftables/expr"
	"github.com/keyhole-net/keyhole/internal/api"
	"golang.org/x/sys/unix"
)

func TestInputFilter(t *testing.T) {
	input := func(rules ...fwRule) fwChain {
		return fwChain{family: "inet", table: "filter", name: "input", input: true, rules: rules}
	}
	chain := func(name string, rules ...fwRule) fwChain {
		return fwChain{family: "inet", table: "filter", name: name, rules: rules}
	}
	accept := fwRule{}
	drop := fwRule{drops: true}
	jump := func(to ...string) fwRule { return fwRule{jumps: to} }
	tests := []struct {
		name   string
		rs     ruleset
		want   api.Fact
		detail string
	}{
		{
			name:   "no chains",
			rs:     ruleset{source: "nftables"},
			want:   api.No,
			detail: "nftables: no chain on the input hook",
		},
		{
			name:   "source not loaded",
			rs:     ruleset{source: "iptables-legacy", absent: "not loaded"},
			want:   api.No,
			detail: "iptables-legacy: not loaded",
		},
		{
			name:   "accepting input chain",
			rs:     ruleset{source: "nftables", chains: []fwChain{input(accept, accept)}},
			want:   api.No,
			detail: "no chain on the input hook drops or rejects (1 input chains)",
		},
		{
			name: "policy drop",
			rs: ruleset{source: "nftables", chains: []fwChain{
				{family: "inet", table: "filter", name: "input", input: true, policyDrop: true},
			}},
			want:   api.Yes,
			detail: "nftables chain inet filter input drops by default (policy drop)",
		},
		{
			name:   "drop rule",
			rs:     ruleset{source: "nftables", chains: []fwChain{input(accept, drop)}},
			want:   api.Yes,
			detail: "nftables chain inet filter input drops or rejects by rule",
		},
		{
			name: "drop in a chain jumped to",
			rs: ruleset{source: "nftables", chains: []fwChain{
				input(accept, jump("zones")),
				chain("zones", jump("public")),
				chain("public", accept, drop),
			}},
			want:   api.Yes,
			detail: "drops or rejects by rule in public",
		},
		{
			name: "drop in a chain not jumped to",
			rs: ruleset{source: "nftables", chains: []fwChain{
				input(accept),
				chain("unused", drop),
				{family: "inet", table: "filter", name: "forward", policyDrop: true},
			}},
			want: api.No,
		},
		{
			name: "same chain name in another table",
			rs: ruleset{source: "nftables", chains: []fwChain{
				input(jump("x")),
				chain("x"),
				{family: "inet", table: "other", name: "x", rules: []fwRule{drop}},
			}},
			want: api.No,
		},
		{
			name: "jump loop",
			rs: ruleset{source: "nftables", chains: []fwChain{
				input(jump("a")),
				chain("a", jump("b")),
				chain("b", jump("a")),
			}},
			want: api.No,
		},
		{
			name: "jump to a chain not read",
			rs: ruleset{source: "nftables", chains: []fwChain{
				input(jump("missing")),
			}},
			want:   api.Unknown,
			detail: "jumps to missing, which was not read",
		},
		{
			name: "unreadable verdict map",
			rs: ruleset{source: "nftables", chains: []fwChain{
				input(fwRule{unknown: "cannot read verdict map __map0: EPERM"}),
			}},
			want:   api.Unknown,
			detail: "nftables chain inet filter input: cannot read verdict map __map0",
		},
		{
			name: "a drop outweighs an unreadable rule",
			rs: ruleset{source: "nftables", chains: []fwChain{
				input(fwRule{unknown: "?"}, drop),
			}},
			want: api.Yes,
		},
		{
			name: "second input chain drops",
			rs: ruleset{source: "nftables", chains: []fwChain{
				input(accept),
				{family: "ip", table: "fw", name: "in", input: true, rules: []fwRule{drop}},
			}},
			want:   api.Yes,
			detail: "chain ip fw in",
		},
		{
			name: "legacy names",
			rs: ruleset{source: "iptables-legacy", chains: []fwChain{
				{table: "filter", name: "INPUT", input: true, policyDrop: true},
			}},
			want:   api.Yes,
			detail: "iptables-legacy chain filter INPUT drops by default",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, detail := inputFilter(tt.rs)
			if got != tt.want {
				t.Errorf("inputFilter() = %s (%s), want %s", got, detail, tt.want)
			}
			contains(t, "detail", detail, tt.detail)
		})
	}
}

func TestInputFilterDeepJumps(t *testing.T) {
	rs := ruleset{source: "nftables"}
	rs.chains = append(rs.chains, fwChain{table: "t", name: "input", input: true, rules: []fwRule{{jumps: []string{"c0"}}}})
	for i := 0; i <= maxChainDepth+1; i++ {
		rs.chains = append(rs.chains, fwChain{table: "t", name: fmt.Sprint("c", i), rules: []fwRule{{jumps: []string{fmt.Sprint("c", i+1)}}}})
	}
	rs.chains = append(rs.chains, fwChain{table: "t", name: fmt.Sprint("c", maxChainDepth+2), rules: []fwRule{{drops: true}}})
	got, detail := inputFilter(rs)
	if got != api.Unknown {
		t.Errorf("inputFilter() = %s (%s), want unknown past the depth limit", got, detail)
	}
	contains(t, "detail", detail, "jumps nest deeper")
}

func TestFirewallFact(t *testing.T) {
	tests := []struct {
		name    string
		facts   []api.Fact
		details []string
		want    api.Fact
		detail  string
	}{
		{"all no", []api.Fact{api.No, api.No}, []string{"a", "b"}, api.No, "a; b"},
		{"one yes", []api.Fact{api.No, api.Yes, api.Unknown}, []string{"a", "b", "c"}, api.Yes, "b"},
		{"one unknown", []api.Fact{api.No, api.Unknown}, []string{"a", "c"}, api.Unknown, "c"},
	}
	for _, tt := range tests {
		got, detail := firewallFact(tt.facts, tt.details)
		if got != tt.want || detail != tt.detail {
			t.Errorf("%s: firewallFact() = %s, %q; want %s, %q", tt.name, got, detail, tt.want, tt.detail)
		}
	}
}

func TestParseIptablesSave(t *testing.T) {
	out := `-P INPUT ACCEPT
-P FORWARD DROP
-P OUTPUT ACCEPT
-N ufw-before-input
-N ufw-user-input
-A INPUT -i lo -j ACCEPT
-A INPUT -m comment --comment "not a -j DROP" -j ufw-before-input
-A INPUT -j LOG --log-prefix "[in] "
-A ufw-before-input -g ufw-user-input
-A ufw-user-input -p tcp -m tcp --dport 22 -j REJECT --reject-with icmp-port-unreachable
`
	got, err := parseIptablesSave(out, "filter")
	if err != nil {
		t.Fatal(err)
	}
	want := []fwChain{
		{table: "filter", name: "INPUT", input: true, rules: []fwRule{{}, {jumps: []string{"ufw-before-input"}}, {}}},
		{table: "filter", name: "FORWARD", policyDrop: true},
		{table: "filter", name: "OUTPUT"},
		{table: "filter", name: "ufw-before-input", rules: []fwRule{{jumps: []string{"ufw-user-input"}}}},
		{table: "filter", name: "ufw-user-input", rules: []fwRule{{drops: true}}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseIptablesSave() =\n%+v\nwant\n%+v", got, want)
	}
	if f, d := inputFilter(ruleset{source: "iptables-legacy", chains: got}); f != api.Yes {
		t.Errorf("inputFilter() = %s (%s), want yes", f, d)
	}

	for _, bad := range []string{"-P INPUT", "-N", "-A", "-X foo", `-A INPUT -m comment --comment "open`} {
		if _, err := parseIptablesSave(bad, "filter"); err == nil {
			t.Errorf("parseIptablesSave(%q) accepted it", bad)
		}
	}
}

func TestSplitIptablesArgs(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"  ", nil},
		{"-A INPUT -j DROP", []string{"-A", "INPUT", "-j", "DROP"}},
		{`-m comment --comment "two words"`, []string{"-m", "comment", "--comment", "two words"}},
		{`--comment "a \"quote\" and \\"`, []string{"--comment", `a "quote" and \`}},
		{`--comment ""`, []string{"--comment", ""}},
		{"-A\tINPUT\r", []string{"-A", "INPUT"}},
	}
	for _, tt := range tests {
		got, err := splitIptablesArgs(tt.in)
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("splitIptablesArgs(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestReadLegacy(t *testing.T) {
	const ruleset = "-P INPUT DROP\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n"
	notFound := &exec.Error{Name: "x", Err: exec.ErrNotFound}
	tests := []struct {
		name string
		// names is /proc/net/ip_tables_names; "-" for none.
		names string
		// tools answers each tool by its command line.
		tools  map[string]string
		absent string
		want   api.Fact
		err    string
	}{
		{name: "not loaded", names: "-", absent: "not loaded"},
		{name: "no filter table", names: "nat\nmangle\n", absent: "no filter table"},
		{
			name:  "iptables-legacy",
			names: "filter\n",
			tools: map[string]string{"iptables-legacy -w 2 -t filter -S": ruleset},
			want:  api.Yes,
		},
		{
			name:  "old iptables without the suffix",
			names: "nat\nfilter\n",
			tools: map[string]string{"iptables -V": "iptables v1.6.1\n", "iptables -w 2 -t filter -S": ruleset},
			want:  api.Yes,
		},
		{
			name:  "only the nf_tables variant installed",
			names: "filter\n",
			tools: map[string]string{"iptables -V": "iptables v1.8.9 (nf_tables)\n"},
			err:   "iptables-legacy is not installed, and iptables is the nf_tables variant",
		},
		{
			name:  "nothing installed",
			names: "filter\n",
			err:   "neither iptables-legacy nor iptables is installed",
		},
		{
			name:  "listing fails",
			names: "filter\n",
			tools: map[string]string{"iptables-legacy -w 2 -t filter -S": "!exit status 4: Permission denied (you must be root)"},
			err:   "Permission denied (you must be root)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newFakeRoot(t)
			if tt.names != "-" {
				r.write("/proc/self/net/ip_tables_names", tt.names)
			}
			c := r.collector()
			c.output = func(_ context.Context, tl tool) ([]byte, error) {
				out, ok := tt.tools[tl.String()]
				switch {
				case !ok:
					return nil, fmt.Errorf("%s: %w", tl.argv[0], notFound)
				case strings.HasPrefix(out, "!"):
					return nil, errors.New(out[1:])
				}
				return []byte(out), nil
			}
			rs, err := c.readLegacy(context.Background(), "iptables-legacy", "ip_tables_names")
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("readLegacy() error = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rs.absent != tt.absent {
				t.Errorf("absent = %q, want %q", rs.absent, tt.absent)
			}
			if tt.absent == "" {
				if got, detail := inputFilter(rs); got != tt.want {
					t.Errorf("inputFilter() = %s (%s), want %s", got, detail, tt.want)
				}
			}
		})
	}
}

func TestDecodeVerdict(t *testing.T) {
	attr := func(typ uint16, val []byte) []byte {
		b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(val)))
		b = binary.NativeEndian.AppendUint16(b, typ)
		b = append(b, val...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	code := func(c int32) []byte {
		return attr(unix.NFTA_VERDICT_CODE, binary.BigEndian.AppendUint32(nil, uint32(c)))
	}
	tests := []struct {
		name string
		in   []byte
		want *expr.Verdict
	}{
		{"accept", code(1), &expr.Verdict{Kind: expr.VerdictAccept}},
		{"drop", code(0), &expr.Verdict{Kind: expr.VerdictDrop}},
		{"jump", append(code(-3), attr(unix.NFTA_VERDICT_CHAIN, []byte("ssh\x00"))...), &expr.Verdict{Kind: expr.VerdictJump, Chain: "ssh"}},
		{"goto, chain first", append(attr(unix.NFTA_VERDICT_CHAIN, []byte("a-chain\x00")), code(-4)...), &expr.Verdict{Kind: expr.VerdictGoto, Chain: "a-chain"}},
		{"empty", nil, nil},
		{"no code", attr(unix.NFTA_VERDICT_CHAIN, []byte("x\x00")), nil},
		{"short code", attr(unix.NFTA_VERDICT_CODE, []byte{1}), nil},
		{"truncated", code(0)[:6], nil},
		{"length too small", []byte{2, 0, 1, 0}, nil},
	}
	for _, tt := range tests {
		got, err := decodeVerdict(tt.in)
		if tt.want == nil {
			if err == nil {
				t.Errorf("%s: decodeVerdict() = %+v, want an error", tt.name, got)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: decodeVerdict() = %+v, %v; want %+v", tt.name, got, err, tt.want)
		}
	}
}

// FuzzDecodeVerdict feeds arbitrary attributes to the verdict decoder,
// which reads bytes the kernel sent: it must not panic.
func FuzzDecodeVerdict(f *testing.F) {
	f.Add([]byte{8, 0, 1, 0, 0, 0, 0, 1})
	f.Add([]byte{8, 0, 1, 0, 0xff, 0xff, 0xff, 0xfd, 8, 0, 2, 0, 's', 's', 'h', 0})
	f.Add([]byte{5, 0, 2, 0, 'x'})
	f.Fuzz(func(t *testing.T, b []byte) {
		decodeVerdict(b)
	})
}
