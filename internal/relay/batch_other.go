//go:build !linux

package relay

// msgTrunc flags a datagram larger than the buffer it was read into
// (MSG_TRUNC; batched reads are plain reads off Linux and never set it).
const msgTrunc = 0x20
