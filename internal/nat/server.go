package nat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/pion/stun/v3"
)

// software is the SOFTWARE attribute the Server puts in its responses.
const software = "keyhole"

// maxDatagram is the Server's read buffer. A Binding request is 20 bytes
// plus a few attributes; anything longer is truncated, fails the STUN
// length check and is ignored.
const maxDatagram = 1500

// Server answers STUN Binding requests (RFC 8489) with the requester's
// address as XOR-MAPPED-ADDRESS, so that nodes can learn their
// server-reflexive address. Everything that is not a well-formed Binding
// request is ignored without a reply. It holds no per-client state, and the
// work per datagram is bounded by the datagram's size.
type Server struct {
	pc  net.PacketConn
	log *slog.Logger
	msg stun.Message // response buffer, reused; Serve is single-goroutine
}

// NewServer returns a Server for pc. The caller owns pc: Serve does not
// close it. log may be nil.
func NewServer(pc net.PacketConn, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{pc: pc, log: log}
}

// Serve answers requests until ctx is done, then returns nil, or until
// reading from the PacketConn fails, then returns that error. Serve must
// not be called concurrently.
func (s *Server) Serve(ctx context.Context) error {
	// Unblock ReadFrom when ctx ends without closing the caller's conn.
	stop := context.AfterFunc(ctx, func() { s.pc.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, maxDatagram)
	for {
		n, addr, err := s.pc.ReadFrom(buf)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue // a deadline set by someone else
			}
			return fmt.Errorf("stun server: read: %w", err)
		}
		ua, ok := addr.(*net.UDPAddr)
		if !ok {
			continue
		}
		resp := s.respond(buf[:n], ua.AddrPort())
		if resp == nil {
			continue
		}
		if _, err := s.pc.WriteTo(resp, addr); err != nil {
			// Per-datagram failures (unreachable client) must not stop
			// the server; the client will retransmit.
			s.log.Debug("stun server: write", "remote_addr", ua.String(), "err", err)
		}
	}
}

// respond returns the Binding success response for req from the given
// address, or nil if req is not a well-formed Binding request. The result
// is valid until the next call.
func (s *Server) respond(req []byte, from netip.AddrPort) []byte {
	if !isSTUN(req) || stunType(req) != stunBindingRequest || !from.IsValid() {
		return nil
	}
	var id [stunTxIDSize]byte
	copy(id[:], req[stunTxIDOffset:stunHeaderSize])
	ip := from.Addr().Unmap()
	err := s.msg.Build(
		stun.NewTransactionIDSetter(id),
		stun.BindingSuccess,
		&stun.XORMappedAddress{IP: ip.AsSlice(), Port: int(from.Port())},
		stun.NewSoftware(software),
		stun.Fingerprint,
	)
	if err != nil {
		return nil
	}
	return s.msg.Raw
}
