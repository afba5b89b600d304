//go:build !linux

package main

import "time"

// procCPU is unavailable without /proc: CPU figures are reported as 0.
func procCPU(pid int) (time.Duration, bool) { return 0, false }

func cpuModel() string { return "unknown" }

func machineCPU() (machineTimes, bool) { return machineTimes{}, false }

type pacer struct{}

func newPacer() *pacer { return &pacer{} }

func (*pacer) until(t time.Time) { time.Sleep(time.Until(t)) }

func (*pacer) close() {}
