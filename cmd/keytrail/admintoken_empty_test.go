package main

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAdminTokenFileEmptyIsNamed: an admin token file that is empty (or
// holds only blanks: a login helper that failed, a volume not yet written)
// was reported as "no admin token: set --token-file,
// KEYTRAIL_ADMIN_TOKEN_FILE or KEYTRAIL_ADMIN_TOKEN", though the operator
// had set one and needed to learn that the file it names is empty. The
// error names the source and the file now, and nothing is sent.
func TestAdminTokenFileEmptyIsNamed(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name    string
		content string
		byFlag  bool
		src     string
	}{
		{"fail/empty-flag", "", true, "--token-file"},
		{"fail/blank-flag", " \n\t\n", true, "--token-file"},
		{"fail/empty-env", "", false, "KEYTRAIL_ADMIN_TOKEN_FILE"},
	} {
		t.Run(c.name, func(t *testing.T) {
			file := filepath.Join(dir, strings.ReplaceAll(c.name, "/", "-"))
			if err := os.WriteFile(file, []byte(c.content), 0o600); err != nil {
				t.Fatal(err)
			}
			fa := &fakeAdmin{status: 200, body: receiptDone}
			srv := httptest.NewServer(fa)
			env := map[string]string{"KEYTRAIL_ADDR": srv.URL}
			args := []string{"revoke", "--workload", "w", "--reason", "r"}
			if c.byFlag {
				args = append(args, "--token-file", file)
			} else {
				env["KEYTRAIL_ADMIN_TOKEN_FILE"] = file
			}
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), args, func(k string) string { return env[k] }, &stdout, &stderr)
			srv.Close()
			want := "admin token (" + c.src + "): " + file + " is empty"
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("revoke with an empty admin token file = %v, want an error containing %q", err, want)
			}
			if fa.auth != "" {
				t.Errorf("the broker was asked (Authorization %q), want nothing sent", fa.auth)
			}
		})
	}
}
