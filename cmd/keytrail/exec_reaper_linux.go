//go:build linux

package main

import (
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// orphanReaper reaps the processes the kernel hands keytrail exec when it
// is PID 1 (a container's entrypoint) or a child subreaper
// (PR_SET_CHILD_SUBREAPER, kept across execve): CMD's descendants whose
// parent exited first (a daemon's double fork, a shell's background job).
// Nobody else waits for them, and their zombies would pile up in the
// process table. CMD itself is left to os/exec's Wait, which must get its
// exit status: the reaper looks at an exited child without reaping it
// (waitid WNOWAIT) and reaps it only if it is not a CMD.
type orphanReaper struct {
	mu      sync.Mutex
	managed map[int]bool // the CMDs os/exec waits for, by pid (under mu)
	kick    chan struct{}
	sigs    chan os.Signal
	stop    chan struct{}
	done    chan struct{}
}

// newOrphanReaper starts the reaper if keytrail is PID 1 or a child
// subreaper, and is nil otherwise: orphans then go to an init that reaps
// them.
func newOrphanReaper() *orphanReaper {
	if os.Getpid() != 1 && !isChildSubreaper() {
		return nil
	}
	r := &orphanReaper{managed: map[int]bool{}, kick: make(chan struct{}, 1), sigs: make(chan os.Signal, 1),
		stop: make(chan struct{}), done: make(chan struct{})}
	signal.Notify(r.sigs, syscall.SIGCHLD)
	go r.loop()
	return r
}

func isChildSubreaper() bool {
	var v int32
	err := unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&v)), 0, 0, 0)
	return err == nil && v != 0
}

// start starts cmd, its pid known to the reaper before the child can have
// exited: the reaper does not take a CMD's status from os/exec.
func (r *orphanReaper) start(cmd *exec.Cmd) error {
	if r == nil {
		return cmd.Start()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	r.managed[cmd.Process.Pid] = true
	return nil
}

// waited says os/exec has waited for the CMD pid: the zombies the reaper
// did not get to while CMD's was first in line are reaped now.
func (r *orphanReaper) waited(pid int) {
	if r == nil {
		return
	}
	r.mu.Lock()
	delete(r.managed, pid)
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// close stops the reaper.
func (r *orphanReaper) close() {
	if r == nil {
		return
	}
	signal.Stop(r.sigs)
	close(r.stop)
	<-r.done
}

func (r *orphanReaper) loop() {
	defer close(r.done)
	for {
		r.reap()
		select {
		case <-r.sigs:
		case <-r.kick:
		case <-r.stop:
			return
		}
	}
}

// reap reaps every exited child but a CMD, until none is left or a CMD is
// first in line (waited calls for another pass once os/exec has it).
func (r *orphanReaper) reap() {
	for {
		var si unix.Siginfo // si_pid 0 unless a child has exited
		err := unix.Waitid(unix.P_ALL, 0, &si, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		pid := siginfoPid(&si)
		if err != nil || pid == 0 { // ECHILD: no child at all
			return
		}
		r.mu.Lock()
		if r.managed[pid] {
			r.mu.Unlock()
			return
		}
		var ws unix.WaitStatus
		for {
			if _, err = unix.Wait4(pid, &ws, unix.WNOHANG, nil); !errors.Is(err, unix.EINTR) {
				break
			}
		}
		r.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// siginfoPid is si_pid of a SIGCHLD siginfo_t: the first field of the union
// after si_signo, si_errno and si_code, which is aligned as a pointer
// (offset 16 on 64-bit systems, 12 on 32-bit ones).
func siginfoPid(si *unix.Siginfo) int {
	off := uintptr(12)
	if unsafe.Sizeof(uintptr(0)) == 8 {
		off = 16
	}
	return int(*(*int32)(unsafe.Add(unsafe.Pointer(si), off)))
}
