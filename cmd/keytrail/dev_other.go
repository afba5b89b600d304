//go:build !linux

package main

// parentIsGoCommand: without /proc the parent is not looked at; Ctrl-C
// still reaches dev under `go run` through the terminal's process group.
func parentIsGoCommand(ppid int) bool { return false }
