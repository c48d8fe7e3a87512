// Package ipam does overlay address arithmetic for the controller: which
// address is the n-th usable host of a pool, and how many a pool holds. It is
// pure logic with no I/O and no state; remembering which addresses were
// handed out (so none is ever given twice) is the store's job, which keeps a
// per-pool counter and asks Nth for the next one.
package ipam

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
)

// ErrExhausted means a pool has no usable address left at the asked index.
var ErrExhausted = errors.New("address pool exhausted")

// Validate reports whether pool can be allocated from: a valid, masked
// prefix (10.0.0.0/8, not 10.1.2.3/8), so that every address it yields is
// inside it and the same n always gives the same address.
func Validate(pool netip.Prefix) error {
	if !pool.IsValid() {
		return fmt.Errorf("pool %v: not a valid prefix", pool)
	}
	if pool.Addr().Zone() != "" {
		return fmt.Errorf("pool %v: zoned addresses cannot be pooled", pool)
	}
	if pool.Masked() != pool {
		return fmt.Errorf("pool %v: host bits set; did you mean %v?", pool, pool.Masked())
	}
	return nil
}

// Size returns the number of usable host addresses in pool, saturating at
// math.MaxUint64 for IPv6 pools wider than 64 host bits.
//
// The network address is never usable (on IPv6 it is the subnet-router
// anycast address), and on IPv4 neither is the broadcast address — except in
// /31 and /32 pools, where every address is a host (RFC 3021).
func Size(pool netip.Prefix) uint64 {
	if Validate(pool) != nil {
		return 0
	}
	hostBits := pool.Addr().BitLen() - pool.Bits()
	if hostBits >= 64 {
		return math.MaxUint64 // 2^hostBits - 1 overflows; nobody will notice the cap
	}
	total := uint64(1) << hostBits
	switch {
	case pool.Addr().Is4() && hostBits <= 1:
		return total
	case pool.Addr().Is4():
		return total - 2
	default:
		return total - 1
	}
}

// Nth returns the n-th (0-based) usable host address of pool, so Nth(p, 0)
// is the first address after the network address. It fails with an error
// wrapping ErrExhausted when pool has no n-th usable address.
func Nth(pool netip.Prefix, n uint64) (netip.Addr, error) {
	if err := Validate(pool); err != nil {
		return netip.Addr{}, err
	}
	if n >= Size(pool) {
		return netip.Addr{}, fmt.Errorf("pool %v: address #%d of %d: %w", pool, n, Size(pool), ErrExhausted)
	}
	offset := n
	// Skip the network address unless the pool is an RFC 3021 /31 or a /32,
	// where the first address is a host too.
	if hostBits := pool.Addr().BitLen() - pool.Bits(); !(pool.Addr().Is4() && hostBits <= 1) {
		offset++
	}
	return add(pool.Addr(), offset), nil
}

// add returns a + off with carry across all bytes of the address. Callers
// guarantee the sum stays inside the pool, so it never wraps.
func add(a netip.Addr, off uint64) netip.Addr {
	if a.Is4() {
		b := a.As4()
		v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		v += uint32(off) // off < 2^32 here: an IPv4 pool holds fewer addresses
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	b := a.As16()
	carry := off
	for i := 15; i >= 0 && carry != 0; i-- {
		sum := uint64(b[i]) + carry&0xff
		b[i] = byte(sum)
		carry = carry>>8 + sum>>8
	}
	return netip.AddrFrom16(b)
}
