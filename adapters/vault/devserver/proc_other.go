//go:build !linux

package devserver

import "syscall"

// DieWithParent: no parent-death signal outside Linux; the caller's own
// shutdown (Stop, the test cleanups, the bench's exit) ends its children.
func DieWithParent() *syscall.SysProcAttr { return &syscall.SysProcAttr{} }
