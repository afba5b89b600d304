//go:build !linux

package harness

import "syscall"

// childAttrs: no parent-death signal outside Linux; the cleanups stop the
// servers.
func childAttrs() *syscall.SysProcAttr { return &syscall.SysProcAttr{} }
