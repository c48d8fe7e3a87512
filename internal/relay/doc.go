// Package relay is Keyhole's STUN/TURN relay (DESIGN.md §7): the fallback
// path for a client and a gateway that cannot reach each other directly.
//
// The gateway holds a TURN allocation on the relay; a client that cannot
// punch through allocates on the same relay with short-lived per-grant
// credentials and sends its WireGuard packets from its allocation to the
// gateway's relayed address, so the traffic goes relay socket to relay
// socket on one host and the relay only ever sees WireGuard ciphertext.
//
// It holds three things: the credential format ([Issue], [ParseUsername],
// [Claims]), which is the TURN REST API one (coturn's use-auth-secret), so
// coturn with the same secret also works as a relay, only without our peer
// restrictions; the [Server], a pion/turn server that answers STUN Binding
// requests and serves TURN over UDP with those restrictions enforced; and
// its [Stats].
//
// The restrictions, carried in the HMAC-authenticated username so a client
// cannot forge them, keep the relay from being an open relay: a gateway
// allocation may only talk to other allocations on this relay, a client
// allocation only to the one relayed address its grant names. Nothing but
// live allocations is reachable on the relay host itself.
//
// What does not live here: the TURN client and candidate logic
// (internal/nat), and deciding who gets credentials (the controller).
package relay
