package nat

import (
	"slices"
	"testing"

	"golang.zx2c4.com/wireguard/conn"
)

// recordBind records the runs sendGSO hands it.
type recordBind struct {
	conn.Bind
	runs [][][]byte
}

func (r *recordBind) Send(bufs [][]byte, _ conn.Endpoint) error {
	r.runs = append(r.runs, bufs)
	return nil
}

// coalesced returns the payload sizes of the messages StdNetBind makes of
// one Send of bufs (conn/bind_std.go's coalesceMessages, buffer capacity
// aside).
func coalesced(bufs [][]byte, is6 bool) []int {
	limit := maxUDPPayload4
	if is6 {
		limit = maxUDPPayload6
	}
	var msgs []int
	seg, count, ended := 0, 0, false
	for i, b := range bufs {
		n := len(b)
		if i > 0 && !ended && n <= seg && count < maxUDPSegments && msgs[len(msgs)-1]+n <= limit {
			msgs[len(msgs)-1] += n
			count++
			ended = n < seg
			continue
		}
		msgs = append(msgs, n)
		seg, count, ended = n, 1, false
	}
	return msgs
}

// packets returns count packets of size bytes.
func packets(size, count int) [][]byte {
	bufs := make([][]byte, count)
	for i := range bufs {
		bufs[i] = make([]byte, size)
	}
	return bufs
}

func TestSendGSOKeepsFramesUnder64KiB(t *testing.T) {
	ep4, _ := conn.NewStdNetBind().ParseEndpoint("192.0.2.1:51820")
	ep6, _ := conn.NewStdNetBind().ParseEndpoint("[2001:db8::1]:51820")
	for _, tc := range []struct {
		name string
		ep   conn.Endpoint
		bufs [][]byte
		want []int // packets per Send
	}{
		// gVisor's 1,424-byte packets: 46 fit UDP's limit, 45 a frame.
		{"gvisor-sized v4", ep4, packets(1424, 128), []int{45, 45, 38}},
		// A kernel stream's 1,448-byte packets fit 45 to a frame either
		// way: no cut, one sendmmsg.
		{"kernel-sized v4", ep4, packets(1448, 90), []int{90}},
		{"kernel TSO burst", ep4, packets(1448, 47), []int{47}},
		{"v6", ep6, packets(1424, 46), []int{45, 1}},
		{"small", ep4, packets(148, 3), []int{3}},
		{"one", ep4, packets(1424, 1), []int{1}},
		{"oversized", ep4, packets(70000, 2), []int{2}},
		// 64 datagrams end a message before any size limit.
		{"segment limit", ep4, packets(200, 130), []int{130}},
		// A shorter packet ends the message before it reaches the limit.
		{"short tail", ep4, slices.Concat(packets(1424, 44), packets(100, 1), packets(1424, 46)), []int{90, 1}},
		{"empty", ep4, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recordBind{}
			if err := sendGSO(r, tc.bufs, tc.ep); err != nil {
				t.Fatal(err)
			}
			var got []int
			sent := 0
			for _, run := range r.runs {
				got = append(got, len(run))
				sent += len(run)
				for _, m := range coalesced(run, tc.ep.DstIP().Is6()) {
					frame := 14 + 20 + 8 + m
					if tc.ep.DstIP().Is6() {
						frame += 20
					}
					if m > len(run[0]) && frame > 1<<16 {
						t.Fatalf("a coalesced message of %d bytes makes a %d-byte frame", m, frame)
					}
				}
			}
			if !slices.Equal(got, tc.want) || sent != len(tc.bufs) {
				t.Fatalf("runs %v, want %v", got, tc.want)
			}
		})
	}
}
