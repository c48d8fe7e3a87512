package main

import (
	"os"
	"runtime/pprof"
	"testing"
)

// envExec makes the test binary behave as the keyhole binary: the lab
// tests run gateways and clients as real processes inside network
// namespaces ("ip netns exec NS <test binary> gateway …").
const envExec = "KEYHOLE_TEST_EXEC"

func TestMain(m *testing.M) {
	if os.Getenv(envExec) == "1" {
		if path := os.Getenv("KEYHOLE_TEST_CPUPROFILE"); path != "" {
			if f, err := os.Create(path); err == nil && pprof.StartCPUProfile(f) == nil {
				code := run(os.Args[1:], os.Stdout, os.Stderr)
				pprof.StopCPUProfile()
				f.Close()
				os.Exit(code)
			}
		}
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}
