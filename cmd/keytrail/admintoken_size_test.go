package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAdminTokenFileOverCapIsRefused: an admin token file longer than the
// cap was cut at the cap and the cut token sent, so the broker answered
// 401 for a token the operator never had (or, with a file of a single
// 1 MiB line, a header the broker refuses). It is refused now, naming the
// file and the cap, before anything is sent; a file at the cap is read.
func TestAdminTokenFileOverCapIsRefused(t *testing.T) {
	for _, c := range []struct {
		name    string
		size    int
		refused bool
	}{
		{"at-the-cap", maxAdminTokenFile, false},
		{"one-byte-over", maxAdminTokenFile + 1, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "admin-token")
			// A token, then spaces up to the size: trimmed, it is the token.
			body := append([]byte("file-token"), bytes.Repeat([]byte(" "), c.size-len("file-token"))...)
			if err := os.WriteFile(file, body, 0o600); err != nil {
				t.Fatal(err)
			}
			auth, _, err := revokeWithTokenFile(t, file)
			if !c.refused {
				if err != nil || auth != "Bearer file-token" {
					t.Fatalf("revoke with a %d-byte token file = %v, Authorization %q; want it to run with the file's token", c.size, err, auth)
				}
				return
			}
			if err == nil {
				t.Fatalf("revoke with a %d-byte token file ran (Authorization %q), want a refusal", c.size, auth)
			}
			if auth != "" {
				t.Errorf("the broker was asked (Authorization %q), want nothing sent", auth)
			}
			if msg := err.Error(); !strings.Contains(msg, file) || !strings.Contains(msg, "larger than 1048576 bytes") {
				t.Errorf("error = %q, want it to name the file and the cap", msg)
			}
		})
	}
}
