package relay

import "golang.org/x/sys/unix"

// msgTrunc flags a datagram larger than the buffer it was read into.
const msgTrunc = unix.MSG_TRUNC
