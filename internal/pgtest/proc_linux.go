package pgtest

import "syscall"

// sysProcAttr runs a PostgreSQL program as cred (nil: as the test) and has
// the kernel send it SIGQUIT, PostgreSQL's immediate shutdown, should the
// test binary die without running its cleanups: no server outlives its
// test.
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT}
}
