//go:build unix

package main

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// terminalSent reports whether CMD has had sig from the terminal already: sig
// is SIGINT (or SIGQUIT), which a terminal sends to every process of its
// foreground process group on Ctrl-C (Ctrl-\), and that group is keytrail's
// own, which CMD shares. Forwarding it too would deliver one Ctrl-C twice, and many
// programs take a second SIGINT for "stop now, skip the clean-up". (The
// price, as with `go run`: a SIGINT sent to keytrail alone with kill(1)
// while it runs in the foreground of a terminal does not reach CMD; SIGTERM
// and SIGHUP are always forwarded.)
func terminalSent(sig os.Signal) bool {
	if sig != syscall.SIGINT && sig != syscall.SIGQUIT {
		return false
	}
	tty, err := os.OpenFile("/dev/tty", os.O_RDONLY|syscall.O_NOCTTY, 0)
	if err != nil {
		return false // no controlling terminal
	}
	defer tty.Close()
	fg, err := unix.IoctlGetInt(int(tty.Fd()), unix.TIOCGPGRP)
	return err == nil && fg == unix.Getpgrp()
}
