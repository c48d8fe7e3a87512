package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/lab"
)

// envLabBench turns on TestLabFigures, the issue 3 performance figures: it
// takes about a minute, so CI does not run it (make bench-lab does).
const envLabBench = "KEYHOLE_LAB_BENCH"

const (
	benchBytes      = 256 << 20 // per throughput run
	firstByteRounds = 20
)

// TestLabFigures measures, in one run: the time from `keyhole connect` to
// the first byte of the app's page over a direct and a relayed path (p50
// and max of 20 runs, a fresh process each), and the throughput of one TCP
// stream direct, relayed, and over the lab's plain routed path without
// Keyhole (client → internet host through the home NAT).
func TestLabFigures(t *testing.T) {
	if os.Getenv(envLabBench) != "1" {
		t.Skip(envLabBench + "=1 measures the NAT lab figures (make bench-lab)")
	}
	type row struct {
		name      string
		firstByte []time.Duration
		mbps      float64
	}
	var rows []row
	for _, tc := range []struct {
		name string
		cfg  lab.Config
		want string
	}{
		{"direct", lab.Config{}, api.PathDirect},
		{"relayed", lab.Config{Home: lab.NAT{Mode: lab.Symmetric}, Site: lab.NAT{Mode: lab.Symmetric}}, api.PathRelayed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nl := newNATLab(t, natLabOpts{lab: tc.cfg})
			nl.startGateway()
			dir := nl.loginClient()
			r := row{name: tc.name}
			for i := range firstByteRounds {
				r.firstByte = append(r.firstByte, nl.timeToFirstByte(dir, 18100+i))
			}
			p, addr := nl.connect(dir, lab.AppName+":80", 18080)
			if got := nl.path(dir); got != tc.want {
				t.Fatalf("path %q, want %q", got, tc.want)
			}
			r.mbps = nl.download(addr)
			p.stop()
			rows = append(rows, r)
			if tc.name == "direct" {
				rows = append(rows, row{name: "plain routed (no Keyhole)", mbps: nl.plainThroughput()})
			}
		})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-28s %14s %14s %12s\n", "path", "first byte p50", "first byte max", "Mbit/s")
	for _, r := range rows {
		p50, max := "-", "-"
		if len(r.firstByte) > 0 {
			slices.Sort(r.firstByte)
			p50 = r.firstByte[len(r.firstByte)/2].Round(time.Millisecond).String()
			max = r.firstByte[len(r.firstByte)-1].Round(time.Millisecond).String()
		}
		fmt.Fprintf(&b, "%-28s %14s %14s %12.0f\n", r.name, p50, max, r.mbps)
	}
	if len(rows) == 3 && rows[0].mbps > 0 {
		fmt.Fprintf(&b, "relayed/direct throughput: %.2f (target ≥ 0.5); direct/plain: %.2f\n", rows[2].mbps/rows[0].mbps, rows[0].mbps/rows[1].mbps)
	}
	t.Log(b.String())
}

// timeToFirstByte starts `keyhole connect` and times until the first byte
// of the page arrives through its forward.
func (nl *natLab) timeToFirstByte(dir string, port int) time.Duration {
	t := nl.t
	t.Helper()
	start := time.Now()
	p, addr := nl.connect(dir, lab.AppName+":80", port)
	defer p.stop()
	c, err := nsDial(nl.Lab, lab.Client)(nl.ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", lab.AppName)
	var one [1]byte
	if _, err := io.ReadFull(c, one[:]); err != nil {
		t.Fatalf("first byte: %v", err)
	}
	return time.Since(start)
}

// download fetches benchBytes through the forward and returns Mbit/s.
func (nl *natLab) download(addr string) float64 {
	t := nl.t
	t.Helper()
	hc := nl.httpClient()
	hc.Timeout = 5 * time.Minute
	start := time.Now()
	resp, err := hc.Get(fmt.Sprintf("http://%s/bytes?n=%d", addr, benchBytes))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || n != benchBytes {
		t.Fatalf("download: %d bytes, %v", n, err)
	}
	return float64(n) * 8 / time.Since(start).Seconds() / 1e6
}

// plainThroughput is one TCP stream from an internet host to the client,
// through the home NAT, without Keyhole.
func (nl *natLab) plainThroughput() float64 {
	t := nl.t
	t.Helper()
	var ln net.Listener
	if err := nl.Run(lab.Internet, func() error {
		var err error
		ln, err = net.Listen("tcp", nl.Addr(lab.Internet2).String()+":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64<<10)
		for n := benchBytes; n > 0; n -= len(buf) {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(nl.ctx, 5*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := nsDial(nl.Lab, lab.Client)(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n, err := io.Copy(io.Discard, c)
	if err != nil || n < benchBytes {
		t.Fatalf("plain: %d bytes, %v", n, err)
	}
	return float64(n) * 8 / time.Since(start).Seconds() / 1e6
}
