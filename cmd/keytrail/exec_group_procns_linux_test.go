//go:build linux

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// TestGroupAliveWithAnotherNamespacesProc: /proc may be another pid
// namespace's (unshare -p without --mount-proc, some sandboxes): its pids
// and process groups are not keytrail's. groupAlive found no process of
// CMD's group there and said the group had gone while it ran, so a
// restart neither waited for it nor SIGKILLed it: what CMD started ran
// on beside the next CMD. Such a /proc is not read; kill(2) is asked (a
// zombie counted, which only costs the grace periods).
func TestGroupAliveWithAnotherNamespacesProc(t *testing.T) {
	cmd := exec.Command("sleep", "1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()

	fake := t.TempDir() // a /proc whose self is not this process
	if err := os.Symlink("999999", filepath.Join(fake, "self")); err != nil {
		t.Fatal(err)
	}
	defer func(p string) { procRoot = p }(procRoot)
	procRoot = fake
	if !groupAlive(cmd.Process.Pid) {
		t.Fatal("groupAlive = false for a running group, read from a /proc that is not this pid namespace's")
	}
	procRoot = "/proc"
	if !groupAlive(cmd.Process.Pid) {
		t.Fatal("groupAlive = false for a running group")
	}
}
