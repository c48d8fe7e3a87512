package cluster

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// Streams that are not mutual TLS with a controller certificate of the
// cluster's CA and the gossip ALPN never reach memberlist.
func TestTransportRefusesStreams(t *testing.T) {
	ca := newTestCA(t)
	n := startNode(t, ca, "ctl-a")
	addr := n.Addr().String()
	ctlB := ca.issue(t, trust.KindController, "ctl-b")
	gw := ca.issue(t, trust.KindGateway, "gw-1")

	for _, tc := range []struct {
		name string
		conf *tls.Config // nil: plain TCP carrying a memberlist ping
	}{
		{"plain TCP", nil},
		{"no client certificate", &tls.Config{InsecureSkipVerify: true, NextProtos: []string{alpnProto}}},
		{"gateway certificate", &tls.Config{InsecureSkipVerify: true, NextProtos: []string{alpnProto}, Certificates: []tls.Certificate{gw}}},
		{"no ALPN", &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{ctlB}}},
		{"HTTP ALPN", &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, Certificates: []tls.Certificate{ctlB}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			_ = raw.SetDeadline(time.Now().Add(5 * time.Second))
			var conn net.Conn = raw
			if tc.conf != nil {
				tc.conf.MinVersion = tls.VersionTLS13
				tc := tls.Client(raw, tc.conf)
				if err := tc.Handshake(); err != nil {
					return // refused during the handshake
				}
				conn = tc
			}
			// memberlist answers a ping (type 0) on a stream it accepted;
			// here the server must close instead.
			_, _ = conn.Write([]byte{0, 0x80, 0, 0, 0, 0, 0, 0})
			b, err := io.ReadAll(conn)
			if len(b) > 0 || err != nil && !errors.Is(err, io.EOF) && !isConnError(err) {
				t.Errorf("read %d bytes, %v", len(b), err)
			}
		})
	}

	// And the right client gets through to memberlist.
	tr := n.tr
	conn, err := tr.DialAddressTimeout(memberlist.Address{Addr: addr, Name: "ctl-a"}, time.Second)
	if err != nil {
		t.Fatalf("dial as a member: %v", err)
	}
	conn.Close()
	if _, err := tr.DialAddressTimeout(memberlist.Address{Addr: addr, Name: "ctl-z"}, time.Second); err == nil {
		t.Error("dial expecting ctl-z reached ctl-a")
	}
}

// isConnError reports a closed or reset connection, or a TLS alert.
func isConnError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op)
}
