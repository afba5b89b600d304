//go:build unix

package main

import (
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/brokertest"
)

// mkfifo makes a named pipe dir/name and returns its path.
func mkfifo(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigFilesRefuseNonRegular: the files the server config names
// (tls.cert_file, tls.key_file, audit.checkpoint_key_file), read at start,
// at a certificate reload and by keytrail config check, are refused when
// they are a named pipe or a device, naming the field and the path and what
// it is, as the config and policy files are. Before, a FIFO blocked the
// read forever (the server never started, config check never answered) and
// /dev/zero was read until memory ran out.
func TestConfigFilesRefuseNonRegular(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile := writeKeyPair(t, dir, "serving", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	fifo := mkfifo(t, dir, "pipe.pem")
	pipe := fifo + ": is a named pipe, not a regular file"

	for _, tt := range []struct{ cert, key, want string }{
		{fifo, keyFile, "tls.cert_file: " + pipe},
		{certFile, fifo, "tls.key_file: " + pipe},
		{"/dev/zero", keyFile, "tls.cert_file: /dev/zero: is a character device, not a regular file"},
		{certFile, dir, "tls.key_file: " + dir + ": is a directory, not a regular file"},
		// Unchanged: the system's error without its "open PATH: ".
		{filepath.Join(dir, "missing.crt"), keyFile, "tls.cert_file: " + filepath.Join(dir, "missing.crt") + ": no such file or directory"},
	} {
		if strings.HasPrefix(tt.cert, "/dev/") {
			if _, err := os.Stat(tt.cert); err != nil {
				continue
			}
		}
		err := brokertest.ReturnsWithin(t, "loadKeyPair("+tt.cert+", "+tt.key+")", func() error { _, err := loadKeyPair(tt.cert, tt.key); return err })
		if err == nil || err.Error() != tt.want {
			t.Errorf("loadKeyPair(%s, %s) = %v, want %q", tt.cert, tt.key, err, tt.want)
		}
	}

	err := brokertest.ReturnsWithin(t, "loadCheckpointKey(fifo)", func() error { _, err := loadCheckpointKey(fifo); return err })
	if err == nil || err.Error() != pipe {
		t.Errorf("loadCheckpointKey(%s) = %v, want %q", fifo, err, pipe)
	}

	// keytrail config check reads them with the same readers.
	pol := writeFile(t, dir, "p.yaml", "version: 1\n")
	cfg := writeFile(t, dir, "config.yaml", "public_url: https://keytrail.internal\npolicy: "+pol+
		"\nvault: {address: https://vault.internal:8200}\naudit: {file: "+filepath.Join(dir, "audit.jsonl")+", checkpoint_key_file: "+fifo+
		"}\ntls: {cert_file: "+certFile+", key_file: "+fifo+"}\n")
	var out, stderr string
	err = brokertest.ReturnsWithin(t, "keytrail config check", func() error {
		var err error
		out, stderr, err = runCLI(t, nil, "config", "check", "--config", cfg)
		return err
	})
	for _, want := range []string{"audit.checkpoint_key_file: " + pipe, "tls.key_file: " + pipe} {
		if err == nil || !strings.Contains(out+stderr, want) {
			t.Errorf("config check = %v\n%s%s\nwant a problem %q", err, out, stderr, want)
		}
	}
}

// TestFlagFilesRefuseNonRegular: a key file given to keytrail audit verify
// (--key), a token file given to keytrail policy explain (--token) and the
// admin token file (revoke --token-file) are refused when they are a named
// pipe, naming the flag and the path. Before, the command blocked forever.
// (--jwks reads a pipe, within bounds: TestReadJWKSPipe.)
func TestFlagFilesRefuseNonRegular(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fifo := mkfifo(t, dir, "pipe")
	pipe := fifo + ": is a named pipe, not a regular file"
	auditFile := writeFile(t, dir, "audit.jsonl", "")

	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"audit verify --key", []string{"audit", "verify", "--key", fifo, auditFile}, "audit verify: --key: " + pipe},
		{"policy explain --token", []string{"policy", "explain", "--unverified", "--policy", "../../policies/examples", "--token", fifo, "--grant", "payments-vault"}, "policy explain: --token: " + pipe},
		{"revoke --token-file", []string{"revoke", "--workload", "w", "--reason", "r", "--token-file", fifo}, "revoke: admin token (--token-file): " + pipe},
	} {
		// A subtest each: on the old code each blocks, and fails, apart.
		t.Run(tt.name, func(t *testing.T) {
			var out string
			err := brokertest.ReturnsWithin(t, strings.Join(tt.args, " "), func() error {
				var err error
				out, _, err = runCLI(t, nil, tt.args...)
				return err
			})
			if err == nil || err.Error() != tt.want {
				t.Errorf("keytrail %s = %v\n%s\nwant %q", strings.Join(tt.args, " "), err, out, tt.want)
			}
		})
	}
}

// TestCABundlesAndVaultFilesRefuseNonRegular: the CA bundles the server
// config names (vault.ca_file, store.ca_file, tls.client_ca_file) and the
// files the Vault login reads (vault.token_file, the AppRole id files, the
// Kubernetes jwt_file) are refused by the server's readers, and so by
// keytrail config check, when they are a named pipe, naming the field and
// the path. Before, a FIFO blocked the server's start and config check
// forever (config check also read each CA bundle a second time, with
// os.ReadFile), and a CA bundle on /dev/zero was read until memory ran out.
func TestCABundlesAndVaultFilesRefuseNonRegular(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fifo := mkfifo(t, dir, "pipe")
	pipe := fifo + ": is a named pipe, not a regular file"

	// The server's reader of tls.client_ca_file and store.ca_file.
	t.Run("loadCAPool", func(t *testing.T) {
		err := brokertest.ReturnsWithin(t, "loadCAPool(fifo)", func() error { _, err := loadCAPool(fifo); return err })
		if err == nil || err.Error() != pipe {
			t.Errorf("loadCAPool(%s) = %v, want %q", fifo, err, pipe)
		}
	})

	pol := writeFile(t, dir, "p.yaml", "version: 1\n")
	config := func(vault, extra string) string {
		return "public_url: http://127.0.0.1:7700\npolicy: " + pol + "\nvault: {address: 'http://127.0.0.1:1'" + vault + "}\n" +
			"audit: {file: " + filepath.Join(dir, "audit.jsonl") + "}\n" + extra
	}
	certFile, keyFile := writeKeyPair(t, dir, "serving", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	for _, tt := range []struct {
		name, yaml string
		want       []string
	}{
		{"ca-bundles-and-token-file", config(", ca_file: "+fifo+", token_file: "+fifo,
			"store: {redis_url: 'rediss://127.0.0.1:1/0', ca_file: "+fifo+"}\ntls: {cert_file: "+certFile+", key_file: "+keyFile+", client_ca_file: "+fifo+"}\n"),
			[]string{"vault.ca_file: " + pipe, "vault.token_file: " + pipe, "store.ca_file: " + pipe, "tls.client_ca_file: " + pipe}},
		{"approle", config(", approle: {role_id_file: "+fifo+", secret_id_file: "+fifo+"}", ""),
			[]string{"vault.approle.role_id_file: " + pipe, "vault.approle.secret_id_file: " + pipe}},
		{"kubernetes", config(", auth: {method: kubernetes, role: broker, jwt_file: "+fifo+"}", ""),
			[]string{"vault.auth.jwt_file: " + pipe}},
	} {
		t.Run("config check/"+tt.name, func(t *testing.T) {
			cfg := writeFile(t, t.TempDir(), "keytrail.yaml", tt.yaml)
			var out, stderr string
			err := brokertest.ReturnsWithin(t, "keytrail config check ("+tt.name+")", func() error {
				var err error
				out, stderr, err = runCLI(t, nil, "config", "check", "--config", cfg)
				return err
			})
			for _, want := range tt.want {
				if err == nil || !strings.Contains(stderr, cfg+": "+want) {
					t.Errorf("config check = %v\n%s%s\nwant a problem %q", err, out, stderr, want)
				}
			}
		})
	}
}

// TestAdminTokenFileSymlink: the admin token file read through a symlink
// (a secret mounted by Kubernetes, a token tool's link to its cache) is
// read as before, and the mode warning is about the file it points to; a
// missing file's message is unchanged.
func TestAdminTokenFileSymlink(t *testing.T) {
	dir := t.TempDir()
	target := writeFile(t, dir, "admin-token", "file-token\n")
	if err := os.Chmod(target, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink("admin-token", link); err != nil {
		t.Fatal(err)
	}
	fa := &fakeAdmin{status: 200, body: receiptDone}
	srv := httptest.NewServer(fa)
	defer srv.Close()
	env := map[string]string{"KEYTRAIL_ADDR": srv.URL}
	_, stderr, err := runCLI(t, env, "revoke", "--workload", "w", "--reason", "r", "--token-file", link)
	if err != nil || fa.auth != "Bearer file-token" {
		t.Errorf("revoke --token-file (a symlink) = %v, Authorization %q; want it run with the file's token", err, fa.auth)
	}
	if want := "admin token file " + link + " has mode 0644"; !strings.Contains(stderr, want) {
		t.Errorf("stderr = %q, want the warning %q", stderr, want)
	}

	missing := filepath.Join(dir, "missing")
	_, _, err = runCLI(t, env, "revoke", "--workload", "w", "--reason", "r", "--token-file", missing)
	if want := "revoke: admin token (--token-file): open " + missing + ": no such file or directory"; err == nil || err.Error() != want {
		t.Errorf("revoke --token-file (missing) = %v, want %q", err, want)
	}
}

// TestPolicyFilesRefuseNonRegularAsConfigFiles: a policy file (or a
// policy directory's entry) that is a named pipe was refused with the
// loader's "policies: " prefix ("policy not read: policies: P: is a named
// pipe, not a regular file"), unlike the config file and the files it
// names ("P: is a named pipe, not a regular file"). It is said as they are
// now, by keytrail policy check and keytrail config check.
func TestPolicyFilesRefuseNonRegularAsConfigFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fifo := mkfifo(t, dir, "p.yaml")
	polDir := filepath.Join(dir, "policies")
	if err := os.Mkdir(polDir, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, polDir, "a.yaml", "version: 1\n")
	entry := mkfifo(t, polDir, "b.yaml")

	for _, tt := range []struct{ path, want string }{
		{fifo, "policy not read: " + fifo + ": is a named pipe, not a regular file"},
		{polDir, "policy not read: " + entry + ": is a named pipe, not a regular file"},
	} {
		err := brokertest.ReturnsWithin(t, "keytrail policy check "+tt.path, func() error {
			_, _, err := runCLI(t, nil, "policy", "check", tt.path)
			return err
		})
		var ee exitError
		if !errors.As(err, &ee) || ee.code != 1 || ee.msg != tt.want {
			t.Errorf("keytrail policy check %s = %v, want exit 1: %q", tt.path, err, tt.want)
		}
	}

	cfg := writeFile(t, dir, "config.yaml", "public_url: https://keytrail.internal\npolicy: "+fifo+
		"\nvault: {address: https://vault.internal:8200}\naudit: {file: "+filepath.Join(dir, "audit.jsonl")+"}\n")
	var out, stderr string
	err := brokertest.ReturnsWithin(t, "keytrail config check", func() error {
		var err error
		out, stderr, err = runCLI(t, nil, "config", "check", "--config", cfg)
		return err
	})
	if err == nil || strings.Contains(out+stderr+err.Error(), "policies: ") || !strings.Contains(out+stderr+err.Error(), fifo+": is a named pipe, not a regular file") {
		t.Errorf("config check (policy a named pipe) = %v\n%s%s\nwant it to say %q without \"policies: \"", err, out, stderr, fifo+": is a named pipe, not a regular file")
	}
}
