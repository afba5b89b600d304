//go:build !unix

package client

import (
	"context"
	"io"
	"os"
)

// readPipe reads the pipe fh to its end (at most maxIdentityToken+1 bytes).
func readPipe(ctx context.Context, fh *os.File) ([]byte, error) {
	return io.ReadAll(io.LimitReader(fh, maxIdentityToken+1))
}
