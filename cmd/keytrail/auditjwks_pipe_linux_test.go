package main

import (
	"bytes"
	"context"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker/brokertest"
)

// TestReadJWKSUnnamedPipe: an unnamed pipe, as bash's <(curl ...) gives
// (/dev/fd/N), is read to its end; one whose writer has exited with
// nothing written is an error at once, not waited on (no writer can come).
func TestReadJWKSUnnamedPipe(t *testing.T) {
	t.Parallel()
	ed, _ := newFakeTransitSigners(t)
	set := jwksJSON(t, jwkJSON(t, ed.kid, "EdDSA", ed.public()))
	for _, tt := range []struct {
		name    string
		write   []byte
		wantErr string
	}{
		{"written", set, ""},
		{"nothing-written", nil, "a pipe closed with nothing written to it"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if _, err := w.Write(tt.write); err != nil {
				t.Fatal(err)
			}
			w.Close() // the writer (curl) has exited
			src := "/proc/self/fd/" + strconv.Itoa(int(r.Fd()))
			var data []byte
			err = brokertest.ReturnsWithin(t, "readJWKS "+src, func() error {
				var err error
				data, err = readJWKS(context.Background(), src)
				return err
			})
			if tt.wantErr == "" {
				if err != nil || !bytes.Equal(data, set) {
					t.Fatalf("readJWKS(%s) = %q, %v; want the set", src, data, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("readJWKS(%s) = %v; want %q", src, err, tt.wantErr)
			}
		})
	}
}
