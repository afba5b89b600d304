//go:build unix && !linux

package main

import "syscall"

// groupAlive reports whether the process group pgid still has a process
// (a zombie not reaped yet counted).
func groupAlive(pgid int) bool {
	return syscall.Kill(-pgid, 0) == nil
}
