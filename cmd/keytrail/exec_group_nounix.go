//go:build !unix

package main

import (
	"os/exec"
	"syscall"
)

// Without process groups, CMD is always signalled alone.

func hasControllingTerminal() bool { return true }

func setOwnGroup(*exec.Cmd) {}

func signalGroup(int, syscall.Signal) error { return nil }

func groupAlive(int) bool { return false }
