//go:build unix

package client

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"syscall"

	"github.com/keytrail/keytrail/broker/piperead"
)

// readPipe reads the pipe fh, opened with O_NONBLOCK, to its end (at most
// maxIdentityToken+1 bytes), waiting for a writer to come and write until
// ctx ends or, at the latest, pipeReadTimeout has passed
// (os.ErrDeadlineExceeded). Opened without waiting, a pipe with no writer
// yet reads as its end: that first empty read is taken for "no writer
// yet", and waited past; once the pipe has been ready (a writer wrote or
// hung up), an empty read is its end. A token whose line has ended (a
// newline after it) is the end too, the writer gone or not. An unnamed pipe (bash's <(cmd),
// /dev/fd/N) is not waited for: read empty, its writer has exited and no
// other can come; errPipeEnded then, when nothing was read. Where a pipe
// cannot be waited for (darwin), it is read blocking, as before. unnamed
// reports whether fh was told to be an unnamed pipe (Linux only).
func readPipe(ctx context.Context, fh *os.File) (b []byte, unnamed bool, err error) {
	b, unnamed, err = piperead.Read(ctx, fh, pipeReadTimeout, piperead.Options{
		Limit: maxIdentityToken,
		// A writer, nothing (more) written yet: done if the token's
		// line has ended (a writer that wrote it and lingers); what it
		// would write next could only make it more than one token.
		Complete: lineEnded,
	})
	switch {
	case errors.Is(err, piperead.ErrNotPollable):
		// Not pollable (darwin's pipes): read blocking.
		b, err := readPipeBlocking(fh)
		return b, false, err
	case err == nil && unnamed && len(b) == 0:
		// Its writer has exited (a writer open, an empty pipe reads
		// EAGAIN), and none can come.
		return b, unnamed, errPipeEnded
	}
	return b, unnamed, err
}

// readPipeBlocking reads the pipe fh, opened with O_NONBLOCK, in blocking
// mode, as before: until a writer present writes a token's line, or hangs
// up; without one, a pipe reads as its end at once. fh.Fd() does not
// clear an O_NONBLOCK the caller asked for (only one os set itself), so
// it is cleared here: left set, a writer that has not written yet read as
// EAGAIN, a permanent error.
func readPipeBlocking(fh *os.File) ([]byte, error) {
	if err := syscall.SetNonblock(int(fh.Fd()), false); err != nil {
		return nil, err
	}
	var b []byte
	buf := make([]byte, 4096)
	for len(b) <= maxIdentityToken && !lineEnded(b) {
		n, err := fh.Read(buf)
		b = append(b, buf[:n]...)
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
	return b, nil
}

// lineEnded reports whether b holds a token whose line has ended: a
// newline after something other than white space. A pipe's writer that
// wrote that much has given the token (checkToken refuses more than one),
// whether or not it closes the pipe then.
func lineEnded(b []byte) bool {
	return bytes.IndexByte(bytes.TrimLeft(b, " \t\r\n"), '\n') >= 0
}
