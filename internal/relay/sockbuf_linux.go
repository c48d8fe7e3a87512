package relay

import (
	"net"

	"golang.org/x/sys/unix"
)

// socketBufferSize is what the relay asks for its UDP sockets' buffers, as
// wireguard-go does for its own: the kernel default (~200 KiB) overflows
// under a burst of segments from one fast TCP stream, and every drop makes
// that stream back off.
const socketBufferSize = 7 << 20

// growBuffers enlarges conn's send and receive buffers, beyond the sysctl
// caps when the process may (CAP_NET_ADMIN), best effort otherwise.
func growBuffers(conn *net.UDPConn) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], socketBufferSize) != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], socketBufferSize)
			}
		}
	})
}
