package main

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"syscall"
)

// procRoot is where groupAlive reads the processes (a test's fake).
var procRoot = "/proc"

// groupAlive reports whether a process of the group pgid has not exited:
// a zombie, which its parent has not reaped yet (an init that does not
// reap), has, though kill(2) still counts it. Without /proc, kill(2) is
// asked, as it is where /proc is another pid namespace's.
func groupAlive(pgid int) bool {
	if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	if self, err := os.Readlink(procRoot + "/self"); err != nil || self != strconv.Itoa(os.Getpid()) {
		// Not this pid namespace's /proc (unshare -p without
		// --mount-proc, a sandbox): its pids and groups are not ours.
		// kill(2) said the group has a process.
		return true
	}
	d, err := os.Open(procRoot)
	if err != nil {
		return true
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return true
	}
	for _, n := range names {
		if n == "" || n[0] < '0' || n[0] > '9' {
			continue
		}
		b, err := os.ReadFile(procRoot + "/" + n + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid pgrp ...; comm may hold anything.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := bytes.Fields(b[i+1:])
		if len(f) < 3 || string(f[0]) == "Z" || string(f[0]) == "X" {
			continue
		}
		if pg, err := strconv.Atoi(string(f[2])); err == nil && pg == pgid {
			return true
		}
	}
	return false
}
