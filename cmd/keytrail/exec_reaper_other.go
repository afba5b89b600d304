//go:build !linux

package main

import "os/exec"

// orphanReaper reaps orphans on Linux only (PID 1 in a container); here it
// is always nil.
type orphanReaper struct{}

func newOrphanReaper() *orphanReaper { return nil }

func (r *orphanReaper) start(cmd *exec.Cmd) error { return cmd.Start() }

func (r *orphanReaper) waited(pid int) {}

func (r *orphanReaper) close() {}
