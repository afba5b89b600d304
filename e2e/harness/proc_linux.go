//go:build linux

package harness

import "syscall"

// childAttrs makes a server the harness starts die with the test binary
// (SIGKILL when the thread that started it ends), so a binary killed before
// its cleanups run (the -timeout panic, a closed output pipe) leaves no
// redis-server, postgres or keytrail behind. The harness does not lock
// goroutines to threads, so threads end only with the process.
func childAttrs() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
