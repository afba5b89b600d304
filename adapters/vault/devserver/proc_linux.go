//go:build linux

package devserver

import "syscall"

// childAttrs makes the Vault server die with the process that started it
// (SIGKILL when the thread that started it ends), so `keytrail dev` or a
// test binary killed before it can stop Vault leaves no server behind.
// Nothing here locks goroutines to threads, so threads end only with the
// process.
func childAttrs() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
