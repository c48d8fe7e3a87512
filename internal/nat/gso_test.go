package nat

import (
	"testing"

	"golang.zx2c4.com/wireguard/conn"
)

// recordBind records the runs sendGSO hands it.
type recordBind struct {
	conn.Bind
	runs []int
}

func (r *recordBind) Send(bufs [][]byte, _ conn.Endpoint) error {
	r.runs = append(r.runs, len(bufs))
	return nil
}

func TestSendGSOKeepsFramesUnder64KiB(t *testing.T) {
	ep4, _ := conn.NewStdNetBind().ParseEndpoint("192.0.2.1:51820")
	ep6, _ := conn.NewStdNetBind().ParseEndpoint("[2001:db8::1]:51820")
	for _, tc := range []struct {
		name  string
		ep    conn.Endpoint
		size  int
		count int
		want  []int
	}{
		// gVisor's 1,424-byte packets: 46 fit UDP's limit, 45 a frame.
		{"gvisor-sized v4", ep4, 1424, 128, []int{45, 45, 38}},
		// A kernel stream's 1,448-byte packets already fit 45 to a frame.
		{"kernel-sized v4", ep4, 1448, 90, []int{45, 45}},
		{"v6", ep6, 1424, 46, []int{45, 1}},
		{"small", ep4, 148, 3, []int{3}},
		{"one", ep4, 1424, 1, []int{1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bufs := make([][]byte, tc.count)
			for i := range bufs {
				bufs[i] = make([]byte, tc.size)
			}
			r := &recordBind{}
			if err := sendGSO(r, bufs, tc.ep); err != nil {
				t.Fatal(err)
			}
			if len(r.runs) != len(tc.want) {
				t.Fatalf("runs %v, want %v", r.runs, tc.want)
			}
			for i := range r.runs {
				if r.runs[i] != tc.want[i] {
					t.Fatalf("runs %v, want %v", r.runs, tc.want)
				}
				frame := 14 + 20 + 8 + r.runs[i]*tc.size
				if tc.ep.DstIP().Is6() {
					frame += 20
				}
				if r.runs[i] > 1 && frame > 1<<16 {
					t.Fatalf("run of %d × %d bytes makes a %d-byte frame", r.runs[i], tc.size, frame)
				}
			}
		})
	}
	if gsoRun(70000, false) != 1 || gsoRun(0, false) != 1 {
		t.Fatal("gsoRun must send oversized or empty packets alone")
	}
}
