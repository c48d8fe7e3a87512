//go:build !linux

package relay

func gsoControl(int) []byte     { return nil }
func gsoUnsupported(error) bool { return true }

const gsoSupported = false
