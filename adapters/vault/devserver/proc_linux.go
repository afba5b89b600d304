//go:build linux

package devserver

import "syscall"

// DieWithParent returns process attributes that make a child process die
// with the process that starts it (SIGKILL when the thread that started it
// ends), so `keytrail dev`, `keytrail bench` or a test binary killed before
// it can stop its servers leaves none behind. The Vault dev server, the
// e2e harness's servers and the bench's children all use it. Callers must
// not start children from a goroutine locked to its thread that exits
// locked (the thread would end, and the child with it).
func DieWithParent() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
