//go:build unix

package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/brokertest"
)

// TestReadJWKSPipe: --jwks takes a pipe, as a SPIRE or Vault user first
// writes it (--jwks <(curl ...), or a named pipe a helper writes to):
// read to its end, at most maxJWKSBytes, its writer waited for within a
// bound (the context's here; jwksPipeTimeout at the latest). Before, a
// pipe was refused ("is a named pipe, not a regular file"). A device is
// still refused, not read.
func TestReadJWKSPipe(t *testing.T) {
	t.Parallel()
	ed, _ := newFakeTransitSigners(t)
	set := jwksJSON(t, jwkJSON(t, ed.kid, "EdDSA", ed.public()))
	read := func(ctx context.Context, src string) ([]byte, error) {
		var data []byte
		err := brokertest.ReturnsWithin(t, "readJWKS "+src, func() error {
			var err error
			data, err = readJWKS(ctx, src)
			return err
		})
		return data, err
	}

	t.Run("named-pipe", func(t *testing.T) {
		fifo := mkfifo(t, t.TempDir(), "jwks")
		go func() {
			// Blocks until readJWKS opens the pipe.
			if err := os.WriteFile(fifo, set, 0); err != nil {
				t.Error(err)
			}
		}()
		data, err := read(context.Background(), fifo)
		if err != nil || !bytes.Equal(data, set) {
			t.Fatalf("readJWKS(named pipe) = %q, %v; want the set", data, err)
		}
		if _, err := parseJWKS(data); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("named-pipe-no-writer-bounded", func(t *testing.T) {
		fifo := mkfifo(t, t.TempDir(), "jwks")
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		_, err := read(ctx, fifo)
		if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), fifo) {
			t.Fatalf("readJWKS(named pipe, no writer) = %v; want the context's end, naming the pipe", err)
		}
	})

	t.Run("named-pipe-too-large", func(t *testing.T) {
		fifo := mkfifo(t, t.TempDir(), "jwks")
		go func() {
			f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
			if err != nil {
				t.Error(err)
				return
			}
			defer f.Close()
			_, _ = f.Write(make([]byte, maxJWKSBytes+64<<10)) // EPIPE once the reader has closed
		}()
		_, err := read(context.Background(), fifo)
		if err == nil || !strings.Contains(err.Error(), "larger than") {
			t.Fatalf("readJWKS(pipe of more than %d bytes) = %v; want larger than", maxJWKSBytes, err)
		}
	})

	t.Run("device-refused", func(t *testing.T) {
		_, err := read(context.Background(), "/dev/zero")
		if err == nil || !strings.Contains(err.Error(), "/dev/zero: is a") {
			t.Fatalf("readJWKS(/dev/zero) = %v; want refused, naming it", err)
		}
	})
}
