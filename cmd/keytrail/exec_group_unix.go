//go:build unix

package main

import (
	"os"
	"os/exec"
	"syscall"
)

// hasControllingTerminal reports whether keytrail has one: then CMD shares
// keytrail's process group, so that the terminal's Ctrl-C, Ctrl-Z and its
// foreground (job control, reading the terminal) treat CMD as keytrail.
func hasControllingTerminal() bool {
	tty, err := os.OpenFile("/dev/tty", os.O_RDONLY|syscall.O_NOCTTY, 0)
	if err != nil {
		return false
	}
	tty.Close()
	return true
}

// setOwnGroup makes cmd start in a process group of its own (its pid).
func setOwnGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

// signalGroup sends sig to the process group pgid.
func signalGroup(pgid int, sig syscall.Signal) error {
	return syscall.Kill(-pgid, sig)
}
