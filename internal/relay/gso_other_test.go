//go:build !linux

package relay

// udpSegmentSize: there is no UDP GSO off Linux.
func udpSegmentSize([]byte) (int, error) { return 0, nil }
