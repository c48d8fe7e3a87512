package posture

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/keyhole-net/keyhole/internal/api"
	"golang.org/x/sys/unix"
)

// inNewNetns moves the calling goroutine, locked to its thread for good,
// into a fresh network namespace of its own; the thread dies with the
// goroutine, so the namespace and its rules go away when the (sub)test
// ends. Netlink sockets opened and programs started from this goroutine
// see that namespace, and so does /proc/thread-self/net.
func inNewNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace and its firewall rules")
	}
	runtime.LockOSThread() // never unlocked: the thread must not serve other goroutines
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("unshare network namespace: %v", err)
	}
}

// sh runs a command in the test's namespace, skipping the test when the
// program is not installed.
func sh(t *testing.T, argv ...string) {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if errors.Is(err, exec.ErrNotFound) {
		t.Skipf("%s is not installed", argv[0])
	}
	if err != nil {
		t.Skipf("%s: %v: %s (the kernel may lack the module)", strings.Join(argv, " "), err, out)
	}
}

// nft runs nft with one command string.
func nft(t *testing.T, cmd string) {
	t.Helper()
	sh(t, "nft", cmd)
}

// TestFirewallInNetns installs real rules in a namespace of the test's
// own and reads them back through the same path Collect uses.
func TestFirewallInNetns(t *testing.T) {
	const inputChain = "add chain inet t input { type filter hook input priority 0 ; policy accept ; }"
	tests := []struct {
		name   string
		setup  func(t *testing.T)
		want   api.Fact
		detail string
	}{
		{
			name:   "bare namespace",
			setup:  func(t *testing.T) {},
			want:   api.No,
			detail: "nftables: no chain on the input hook; iptables-legacy: ",
		},
		{
			name: "nftables input policy drop",
			setup: func(t *testing.T) {
				nft(t, "add table inet t")
				nft(t, "add chain inet t input { type filter hook input priority 0 ; policy drop ; }")
			},
			want:   api.Yes,
			detail: "nftables chain inet t input drops by default (policy drop)",
		},
		{
			name: "nftables reject rule",
			setup: func(t *testing.T) {
				nft(t, "add table inet t")
				nft(t, inputChain)
				nft(t, "add rule inet t input ct state established,related accept")
				nft(t, "add rule inet t input tcp dport 22 reject")
			},
			want:   api.Yes,
			detail: "nftables chain inet t input drops or rejects by rule",
		},
		{
			name: "nftables drop in a chain jumped to",
			setup: func(t *testing.T) {
				nft(t, "add table inet t")
				nft(t, inputChain)
				nft(t, "add chain inet t services")
				nft(t, "add rule inet t services udp dport 53 drop")
				nft(t, "add rule inet t input jump services")
			},
			want:   api.Yes,
			detail: "drops or rejects by rule in services",
		},
		{
			name: "nftables verdict map",
			setup: func(t *testing.T) {
				nft(t, "add table inet t")
				nft(t, inputChain)
				nft(t, "add rule inet t input tcp dport vmap { 22 : accept, 23 : drop }")
			},
			want:   api.Yes,
			detail: "drops or rejects by rule",
		},
		{
			name: "nftables named verdict map jumping to a dropping chain",
			setup: func(t *testing.T) {
				nft(t, "add table inet t")
				nft(t, inputChain)
				nft(t, "add chain inet t ssh")
				nft(t, "add rule inet t ssh ip saddr != 198.51.100.0/24 reject")
				nft(t, "add map inet t ports { type inet_service : verdict ; elements = { 22 : jump ssh, 80 : accept } ; }")
				nft(t, "add rule inet t input tcp dport vmap @ports")
			},
			want:   api.Yes,
			detail: "drops or rejects by rule in ssh",
		},
		{
			name: "nftables verdict map that only accepts",
			setup: func(t *testing.T) {
				nft(t, "add table inet t")
				nft(t, inputChain)
				nft(t, "add rule inet t input tcp dport vmap { 22 : accept, 80 : accept }")
			},
			want: api.No,
		},
		{
			name: "nftables input chain that only accepts",
			setup: func(t *testing.T) {
				nft(t, "add table inet t")
				nft(t, inputChain)
				nft(t, "add rule inet t input ct state established accept")
				nft(t, "add chain inet t output { type filter hook output priority 0 ; policy drop ; }")
			},
			want:   api.No,
			detail: "nftables: no chain on the input hook drops or rejects (1 input chains)",
		},
		{
			name: "iptables-nft reject",
			setup: func(t *testing.T) {
				out, err := exec.Command("iptables", "-V").Output()
				if err != nil || !strings.Contains(string(out), "nf_tables") {
					t.Skip("iptables is not the nf_tables variant")
				}
				sh(t, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "REJECT")
			},
			want:   api.Yes,
			detail: "nftables chain ip filter INPUT drops or rejects by rule",
		},
		{
			name: "iptables-legacy drop rule",
			setup: func(t *testing.T) {
				sh(t, "iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "DROP")
			},
			want:   api.Yes,
			detail: "iptables-legacy chain filter INPUT drops or rejects by rule",
		},
		{
			name: "ip6tables-legacy policy drop",
			setup: func(t *testing.T) {
				sh(t, "ip6tables-legacy", "-P", "INPUT", "DROP")
			},
			want:   api.Yes,
			detail: "ip6tables-legacy chain filter INPUT drops by default",
		},
		{
			name: "iptables-legacy accepting",
			setup: func(t *testing.T) {
				sh(t, "iptables-legacy", "-A", "INPUT", "-i", "lo", "-j", "ACCEPT")
			},
			want:   api.No,
			detail: "iptables-legacy: no chain on the input hook drops or rejects",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inNewNetns(t)
			tt.setup(t)
			got, detail := newCollector(Config{}).firewall(context.Background())
			if got != tt.want {
				t.Errorf("firewall() = %s (%s), want %s", got, detail, tt.want)
			}
			contains(t, "detail", detail, tt.detail)
		})
	}
}

// TestFirewallInNetnsUnprivileged reads the firewall from a thread that
// has dropped root: the rules cannot be read, and the detail says what it
// takes.
func TestFirewallInNetnsUnprivileged(t *testing.T) {
	inNewNetns(t)
	nft(t, "add table inet t")
	nft(t, "add chain inet t input { type filter hook input priority 0 ; policy drop ; }")
	// The raw system call changes this thread's credentials only (Go's
	// own Setresuid would change every thread of the test binary); the
	// locked thread dies with the test.
	const nobody = 65534
	if _, _, errno := unix.RawSyscall(unix.SYS_SETRESUID, nobody, nobody, nobody); errno != 0 {
		t.Fatalf("setresuid: %v", errno)
	}
	c := newCollector(Config{})
	c.euid = nobody
	got, detail := c.firewall(context.Background())
	if got != api.Unknown {
		t.Errorf("firewall() = %s (%s), want unknown", got, detail)
	}
	contains(t, "detail", detail, "nftables: cannot list chains")
	contains(t, "detail", detail, "(reading the firewall needs root or CAP_NET_ADMIN)")
}
