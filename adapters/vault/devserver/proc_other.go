//go:build !linux

package devserver

import "syscall"

// childAttrs: no parent-death signal outside Linux; Stop ends the server.
func childAttrs() *syscall.SysProcAttr { return &syscall.SysProcAttr{} }
