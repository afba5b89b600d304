//go:build !unix

package client

import (
	"context"
	"io"
	"os"
)

// readPipe reads the pipe fh to its end (at most maxIdentityToken+1 bytes).
// An unnamed pipe is not told apart here.
func readPipe(ctx context.Context, fh *os.File) (b []byte, unnamed bool, err error) {
	b, err = io.ReadAll(io.LimitReader(fh, maxIdentityToken+1))
	return b, false, err
}
