//go:build unix

package piperead

import (
	"context"
	"errors"
	"os"
	"syscall"
	"time"
)

// ErrNotPollable is Read's when f cannot be read with a time limit on this
// system (darwin's pipes): nothing was read, and what to do instead (read
// blocking, or refuse) is the caller's.
var ErrNotPollable = errors.New("a pipe cannot be read with a time limit on this system")

// Options are what the two readers of a pipe differ in.
type Options struct {
	// Limit: Read stops once it has read more than Limit bytes (the
	// caller's to refuse as too large).
	Limit int
	// BufSize is the size of each read(2); 4096 if zero.
	BufSize int
	// Complete, if set, reports whether what was read so far is all the
	// caller wants, asked when a writer is present but has written
	// nothing more: true ends the read there, the writer still open
	// (a token whose line has ended). Nil: read to the end.
	Complete func(b []byte) bool
}

// Read reads the pipe f, opened with O_NONBLOCK, to its end, waiting for a
// writer to come and write until ctx ends or, at the latest, timeout has
// passed: then os.ErrDeadlineExceeded (ctx.Err() tells the two apart).
// Opened without waiting, a pipe with no writer yet reads as its end: that
// first empty read is taken for "no writer yet", and waited past; once the
// pipe has been ready (a writer wrote or hung up), an empty read is its
// end. An unnamed pipe (bash's <(cmd), /dev/fd/N; told apart on Linux
// only) is not waited for: read empty, its writer has exited and no other
// can come, so Read returns nothing and no error at once; unnamed says
// which it was. ErrNotPollable where f cannot be read with a time limit.
func Read(ctx context.Context, f *os.File, timeout time.Duration, o Options) (b []byte, unnamed bool, err error) {
	if err := f.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, false, ErrNotPollable
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, false, err
	}
	if err := rc.Control(func(fd uintptr) { unnamed = unnamedPipe(fd) }); err != nil {
		return nil, false, err
	}
	stop := context.AfterFunc(ctx, func() { _ = f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	size := o.BufSize
	if size <= 0 {
		size = 4096
	}
	var (
		buf   = make([]byte, size)
		calls int
		rerr  error
	)
	err = rc.Read(func(fd uintptr) bool {
		calls++
		for {
			n, err := syscall.Read(int(fd), buf)
			switch {
			case n > 0:
				b = append(b, buf[:n]...)
				if len(b) > o.Limit {
					return true
				}
			case errors.Is(err, syscall.EINTR):
			case errors.Is(err, syscall.EAGAIN):
				// A writer, nothing (more) written yet.
				return o.Complete != nil && o.Complete(b)
			case err != nil:
				rerr = err
				return true
			default: // the end, or (the first time) no writer yet
				return len(b) > 0 || calls > 1 || unnamed
			}
		}
	})
	if err == nil {
		err = rerr
	}
	return b, unnamed, err
}
