//go:build !linux

package relay

import "net"

const socketBufferSize = 7 << 20

// growBuffers enlarges conn's send and receive buffers, best effort.
func growBuffers(conn *net.UDPConn) {
	_ = conn.SetReadBuffer(socketBufferSize)
	_ = conn.SetWriteBuffer(socketBufferSize)
}
