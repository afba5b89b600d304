//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"github.com/keytrail/keytrail/broker/client"
	"github.com/keytrail/keytrail/broker/piperead"
)

// jwksPipeTimeout bounds the wait for a pipe given to --jwks to be written
// and closed: the identity-token file reader's bound (fetch, exec).
const jwksPipeTimeout = client.DefaultTimeout

// openJWKSPipe opens path if it is a pipe (a named one, bash's <(curl ...),
// /dev/stdin fed by one) and reads it to its end, at most maxJWKSBytes+1
// bytes, waiting for a writer at most jwksPipeTimeout or until ctx ends. ok
// is false, and nothing is read, for anything else (the caller's to open).
// The pipe is opened without blocking (a named pipe with no writer would
// otherwise block the open); a first read of nothing is taken for "no
// writer yet" and waited past, a later one for the end (an unnamed pipe,
// whose writer cannot come later, is not waited past).
func openJWKSPipe(ctx context.Context, path string) (data []byte, ok bool, err error) {
	if st, err := os.Stat(path); err != nil || st.Mode().Type() != fs.ModeNamedPipe {
		return nil, false, nil
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, true, err // names the file
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || st.Mode().Type() != fs.ModeNamedPipe {
		return nil, false, nil // replaced since: opened as any file
	}
	b, _, err := piperead.Read(ctx, f, jwksPipeTimeout, piperead.Options{Limit: maxJWKSBytes, BufSize: 32 << 10})
	switch {
	case errors.Is(err, piperead.ErrNotPollable):
		// Not pollable here (darwin's pipes): not read blocking.
		return nil, true, fmt.Errorf("%s: a pipe cannot be read with a time limit on this system: save the JWKS to a file", path)
	case errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() != nil:
		return nil, true, fmt.Errorf("%s: %w", path, ctx.Err())
	case errors.Is(err, os.ErrDeadlineExceeded):
		return nil, true, fmt.Errorf("%s: a pipe not written and closed within %s", path, jwksPipeTimeout)
	case err != nil:
		return nil, true, fmt.Errorf("%s: %w", path, err)
	case len(b) == 0:
		return nil, true, fmt.Errorf("%s: a pipe closed with nothing written to it", path)
	}
	return b, true, nil
}
