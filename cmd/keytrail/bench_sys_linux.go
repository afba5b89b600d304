//go:build linux

package main

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procCPU returns the CPU time (user + system) a process has used so far.
func procCPU(pid int) (time.Duration, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	return parseProcStat(string(b))
}

// machineCPU reads the machine's CPU times (see parseMachineStat).
func machineCPU() (machineTimes, bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return machineTimes{}, false
	}
	return parseMachineStat(string(b))
}

// cpuModel is the "model name" of /proc/cpuinfo.
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// pacer sleeps until given instants with sub-millisecond precision: the Go
// runtime's timers wake up to about 1 ms late on Linux, which would add
// itself to every open-loop latency. The pacer's goroutine owns its OS
// thread and sleeps in nanosleep(2) instead, which costs no CPU while
// waiting.
type pacer struct{}

func newPacer() *pacer {
	runtime.LockOSThread()
	return &pacer{}
}

func (*pacer) until(t time.Time) {
	d := time.Until(t)
	if d <= 0 {
		return
	}
	ts := syscall.NsecToTimespec(int64(d))
	for syscall.Nanosleep(&ts, &ts) == syscall.EINTR {
	}
}

// close gives the thread back (an exiting locked thread would take a
// child's Pdeathsig with it).
func (*pacer) close() { runtime.UnlockOSThread() }
