// Package nat lets one WireGuard UDP socket also carry STUN, so a node can
// learn its server-reflexive (public) address from the very socket its peers
// must reach (DESIGN.md §6–7).
//
// It holds three things: [Classify], a pure classifier that tells WireGuard
// from STUN datagrams; [Bind], a [conn.Bind] wrapper that takes STUN responses
// to our own outstanding transactions out of wireguard-go's receive batches
// and answers [Bind.Reflexive]; and [Server], a minimal STUN Binding server
// for the controller.
//
// What does not live here: candidate exchange, hole punching and TURN relays
// (they build on this package), and anything from internal/api — the data
// plane never sees wire structs.
package nat

import "golang.zx2c4.com/wireguard/conn"

var _ conn.Bind = (*Bind)(nil)
