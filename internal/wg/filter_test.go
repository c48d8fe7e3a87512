package wg

import (
	"errors"
	"testing"

	"golang.zx2c4.com/wireguard/tun"
)

// recordingTUN records what is written to it.
type recordingTUN struct {
	tun.Device
	got [][]byte
	err error
}

func (r *recordingTUN) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		r.got = append(r.got, b[offset:])
	}
	return len(bufs), r.err
}

// keepOdd keeps packets whose first byte is odd.
type keepOdd struct{}

func (keepOdd) Filter(bufs [][]byte, offset int) [][]byte {
	kept := bufs[:0]
	for _, b := range bufs {
		if b[offset]%2 == 1 {
			kept = append(kept, b)
		}
	}
	return kept
}

func TestFilteredDevice(t *testing.T) {
	for _, tc := range []struct {
		name    string
		packets []byte // first bytes
		want    int    // packets reaching the device
		err     error
	}{
		{"some refused", []byte{1, 2, 3, 4, 5}, 3, nil},
		{"all refused", []byte{2, 4}, 0, nil},
		{"none refused", []byte{1, 3}, 2, nil},
		{"device error", []byte{1, 2}, 1, errors.New("tun gone")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recordingTUN{err: tc.err}
			d := &filteredDevice{Device: rec, filter: keepOdd{}}
			const offset = 4
			bufs := make([][]byte, len(tc.packets))
			for i, p := range tc.packets {
				bufs[i] = []byte{0, 0, 0, 0, p}
			}
			n, err := d.Write(bufs, offset)
			if len(rec.got) != tc.want {
				t.Fatalf("device got %d packets, want %d", len(rec.got), tc.want)
			}
			for _, p := range rec.got {
				if p[0]%2 != 1 {
					t.Fatalf("a refused packet reached the device: %v", p)
				}
			}
			if tc.err != nil {
				if err == nil || n != 0 {
					t.Fatalf("Write = %d, %v; want the device's error", n, err)
				}
				return
			}
			if err != nil || n != len(tc.packets) {
				t.Fatalf("Write = %d, %v; want every packet reported written", n, err)
			}
		})
	}
}
