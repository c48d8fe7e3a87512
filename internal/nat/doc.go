// Package nat lets one WireGuard UDP socket carry everything a node behind a
// NAT needs (DESIGN.md §6–7): STUN, to learn its server-reflexive (public)
// address from the very socket its peers must reach; connectivity checks,
// authenticated per grant, that punch holes and pick a path; and a TURN
// allocation, through which peers that cannot reach it directly arrive.
//
// It holds [Classify], a pure classifier that tells WireGuard from STUN
// datagrams, and [Bind], a [conn.Bind] wrapper that takes STUN responses to
// its own transactions, connectivity checks and TURN traffic out of
// wireguard-go's receive batches ([Bind.Reflexive], [Bind.Check],
// [Bind.Allocate]). Relayed peers reach wireguard-go as [RelayEndpoint]s.
// An [InitiationHook] may look at handshake initiations before wireguard-go
// does, and hold one back until the initiator's peer exists (the gateway's
// lazy peers).
//
// What does not live here: deciding which candidate to use (the client),
// when to punch (the gateway), the relay server (internal/relay), and
// anything from internal/api — the data plane never sees wire structs.
package nat

import "golang.zx2c4.com/wireguard/conn"

var _ conn.Bind = (*Bind)(nil)
