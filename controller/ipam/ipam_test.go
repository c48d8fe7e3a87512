package ipam

import (
	"errors"
	"math"
	"net/netip"
	"testing"
)

func TestNth(t *testing.T) {
	tests := []struct {
		name    string
		pool    string
		n       uint64
		want    string
		wantErr error // nil, ErrExhausted, or errAny for a validation error
	}{
		{name: "first skips network", pool: "100.64.0.0/10", n: 0, want: "100.64.0.1"},
		{name: "second", pool: "100.64.0.0/10", n: 1, want: "100.64.0.2"},
		{name: "carries into next octet", pool: "100.64.0.0/10", n: 255, want: "100.64.1.0"},
		{name: "last before broadcast", pool: "100.64.0.0/10", n: 1<<22 - 3, want: "100.127.255.254"},
		{name: "broadcast is not usable", pool: "100.64.0.0/10", n: 1<<22 - 2, wantErr: ErrExhausted},
		{name: "slash30 first", pool: "192.0.2.0/30", n: 0, want: "192.0.2.1"},
		{name: "slash30 second", pool: "192.0.2.0/30", n: 1, want: "192.0.2.2"},
		{name: "slash30 exhausted", pool: "192.0.2.0/30", n: 2, wantErr: ErrExhausted},
		{name: "slash31 both usable", pool: "192.0.2.0/31", n: 1, want: "192.0.2.1"},
		{name: "slash31 first", pool: "192.0.2.0/31", n: 0, want: "192.0.2.0"},
		{name: "slash31 exhausted", pool: "192.0.2.0/31", n: 2, wantErr: ErrExhausted},
		{name: "slash32", pool: "192.0.2.7/32", n: 0, want: "192.0.2.7"},
		{name: "slash32 exhausted", pool: "192.0.2.7/32", n: 1, wantErr: ErrExhausted},
		{name: "top of ipv4 space", pool: "255.255.255.0/24", n: 253, want: "255.255.255.254"},
		{name: "huge n exhausted", pool: "100.64.0.0/10", n: math.MaxUint64, wantErr: ErrExhausted},
		{name: "ipv6 first skips anycast", pool: "fd7a:115c:a1e0::/48", n: 0, want: "fd7a:115c:a1e0::1"},
		{name: "ipv6 carries", pool: "fd7a:115c:a1e0::/48", n: 0xffff, want: "fd7a:115c:a1e0::1:0"},
		{name: "ipv6 large n", pool: "fd00::/64", n: math.MaxUint64 - 1, want: "fd00::ffff:ffff:ffff:ffff"},
		{name: "ipv6 64-bit n beyond /64 boundary", pool: "fd00::/56", n: math.MaxUint64 - 1, want: "fd00::ffff:ffff:ffff:ffff"},
		{name: "ipv6 last address usable", pool: "fd00::/126", n: 2, want: "fd00::3"},
		{name: "ipv6 slash126 exhausted", pool: "fd00::/126", n: 3, wantErr: ErrExhausted},
		{name: "ipv6 slash128", pool: "fd00::5/128", n: 0, wantErr: ErrExhausted},
		{name: "host bits set", pool: "100.64.2.3/10", n: 0, wantErr: errAny},
		{name: "invalid prefix", pool: "", n: 0, wantErr: errAny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pool netip.Prefix
			if tt.pool != "" {
				pool = netip.MustParsePrefix(tt.pool)
			}
			got, err := Nth(pool, tt.n)
			switch {
			case tt.wantErr == errAny:
				if err == nil || errors.Is(err, ErrExhausted) {
					t.Fatalf("Nth(%v, %d) = %v, %v; want a validation error", pool, tt.n, got, err)
				}
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Nth(%v, %d) = %v, %v; want %v", pool, tt.n, got, err, tt.wantErr)
				}
			case err != nil:
				t.Fatalf("Nth(%v, %d): %v", pool, tt.n, err)
			case got != netip.MustParseAddr(tt.want):
				t.Fatalf("Nth(%v, %d) = %v; want %v", pool, tt.n, got, tt.want)
			case !pool.Contains(got):
				t.Fatalf("Nth(%v, %d) = %v is outside the pool", pool, tt.n, got)
			}
		})
	}
}

// errAny marks a case that must fail for a reason other than exhaustion.
var errAny = errors.New("any error")

func TestSize(t *testing.T) {
	tests := []struct {
		pool string
		want uint64
	}{
		{"100.64.0.0/10", 1<<22 - 2},
		{"192.0.2.0/24", 254},
		{"192.0.2.0/30", 2},
		{"192.0.2.0/31", 2},
		{"192.0.2.1/32", 1},
		{"0.0.0.0/0", 1<<32 - 2},
		{"fd00::/120", 255},
		{"fd00::/127", 1},
		{"fd00::/128", 0},
		{"fd00::/64", math.MaxUint64},
		{"fd00::/48", math.MaxUint64},
		{"100.64.0.1/10", 0}, // not masked
	}
	for _, tt := range tests {
		t.Run(tt.pool, func(t *testing.T) {
			if got := Size(netip.MustParsePrefix(tt.pool)); got != tt.want {
				t.Fatalf("Size(%s) = %d; want %d", tt.pool, got, tt.want)
			}
		})
	}
}

// TestNthDistinct walks a whole small pool: every address is distinct, inside
// the pool, and neither the network nor the broadcast address.
func TestNthDistinct(t *testing.T) {
	for _, s := range []string{"198.51.100.0/24", "fd00::/120"} {
		pool := netip.MustParsePrefix(s)
		seen := map[netip.Addr]bool{}
		for n := range Size(pool) {
			a, err := Nth(pool, n)
			if err != nil {
				t.Fatalf("Nth(%v, %d): %v", pool, n, err)
			}
			if seen[a] || !pool.Contains(a) || a == pool.Addr() {
				t.Fatalf("Nth(%v, %d) = %v: repeated, outside, or the network address", pool, n, a)
			}
			if a.Is4() && a == netip.MustParseAddr("198.51.100.255") {
				t.Fatalf("Nth(%v, %d) gave the broadcast address", pool, n)
			}
			seen[a] = true
		}
	}
}
