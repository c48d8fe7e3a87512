package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"runtime/pprof"
	"testing"
)

// envExec makes the test binary behave as the keyhole binary: the lab
// tests run gateways and clients as real processes inside network
// namespaces ("ip netns exec NS <test binary> gateway …").
const envExec = "KEYHOLE_TEST_EXEC"

// envDial makes the test binary dial a control socket, send a status
// request and print the answer (the test for other users runs it as one).
const envDial = "KEYHOLE_TEST_DIAL"

func TestMain(m *testing.M) {
	if path := os.Getenv(envDial); path != "" {
		c, err := net.Dial("unix", path)
		if err != nil {
			fmt.Println("dial:", err)
			os.Exit(3)
		}
		fmt.Fprintln(c, `{"op":"status"}`)
		b, _ := io.ReadAll(c)
		fmt.Print(string(b))
		os.Exit(0)
	}
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
