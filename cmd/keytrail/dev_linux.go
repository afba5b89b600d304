//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
)

// parentIsGoCommand reports whether process ppid is the go command (dev
// under `go run`).
func parentIsGoCommand(ppid int) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", ppid))
	return err == nil && filepath.Base(exe) == "go"
}
