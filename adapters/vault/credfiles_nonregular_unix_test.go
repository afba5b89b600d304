//go:build unix

package vault_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	vault "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// makeFIFO makes a named pipe dir/name and returns its path.
func makeFIFO(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// selfSignedPEM is a PEM CA certificate, for a CA bundle.
func selfSignedPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestCredentialFilesRefuseNonRegular: the files the Vault client and login
// read (vault.token_file, vault.ca_file and the CA bundles read with its
// reader, the AppRole role and secret id files, the Kubernetes jwt_file)
// are refused when they are a named pipe, a device or a directory, naming
// the file (and the field) and what it is, as the config file is. Before,
// a FIFO blocked the read forever: NewClient, the login at start (holding
// the login lock) or keytrail config check never returned; a CA bundle on
// /dev/zero was read until memory ran out. A missing file's message is
// unchanged.
func TestCredentialFilesRefuseNonRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := makeFIFO(t, dir, "pipe")
	pipe := fifo + ": is a named pipe, not a regular file"
	missing := filepath.Join(dir, "missing")
	_, devErr := os.Stat("/dev/zero")
	hasDevZero := devErr == nil

	// Each call site is a subtest: on the old code each blocks on its first
	// case, the FIFO, and its subtest fails there (before /dev/zero).

	// ReadCredentialFile (the login's reader, and keytrail config check's).
	t.Run("ReadCredentialFile", func(t *testing.T) {
		for _, tt := range []struct{ path, want string }{
			{fifo, pipe}, // first: on the old code it blocks here
			{"/dev/zero", "/dev/zero: is a character device, not a regular file"},
			{dir, dir + ": is a directory, not a regular file"},
			{missing, "open " + missing + ": no such file or directory"}, // unchanged
		} {
			if tt.path == "/dev/zero" && !hasDevZero {
				continue
			}
			err := brokertest.ReturnsWithin(t, "ReadCredentialFile("+tt.path+")", func() error { _, err := vault.ReadCredentialFile(tt.path); return err })
			if err == nil || err.Error() != tt.want {
				t.Errorf("ReadCredentialFile(%s) = %v, want %q", tt.path, err, tt.want)
			}
		}
	})

	// LoadCAFile (vault.ca_file, store.ca_file, tls.client_ca_file).
	t.Run("LoadCAFile", func(t *testing.T) {
		for _, tt := range []struct{ path, want string }{
			{fifo, pipe}, // first: on the old code it blocks (and /dev/zero would be read without end)
			{"/dev/zero", "/dev/zero: is a character device, not a regular file"},
			{dir, dir + ": is a directory, not a regular file"},
			{missing, "open " + missing + ": no such file or directory"}, // unchanged
		} {
			if tt.path == "/dev/zero" && !hasDevZero {
				continue
			}
			err := brokertest.ReturnsWithin(t, "LoadCAFile("+tt.path+")", func() error { _, err := vault.LoadCAFile(tt.path); return err })
			if err == nil || err.Error() != tt.want {
				t.Errorf("LoadCAFile(%s) = %v, want %q", tt.path, err, tt.want)
			}
		}
	})

	// NewClient names the field.
	t.Run("NewClient", func(t *testing.T) {
		for _, tt := range []struct {
			name string
			o    vault.ClientOptions
			want string
		}{
			{"token_file", vault.ClientOptions{Address: "http://127.0.0.1:8200", TokenFile: fifo}, "vault.token_file: " + pipe},
			{"ca_file", vault.ClientOptions{Address: "http://127.0.0.1:8200", Token: "x", CAFile: fifo}, "vault.ca_file: " + pipe},
			{"missing-token_file", vault.ClientOptions{Address: "http://127.0.0.1:8200", TokenFile: missing}, "vault.token_file: open " + missing + ": no such file or directory"},
		} {
			err := brokertest.ReturnsWithin(t, "NewClient with "+tt.name, func() error { _, err := vault.NewClient(tt.o); return err })
			if err == nil || err.Error() != tt.want {
				t.Errorf("NewClient with %s = %v, want %q", tt.name, err, tt.want)
			}
		}
	})

	// The login at start names the method's field; nothing is sent to
	// Vault (the address answers nothing).
	t.Run("Login.Start", func(t *testing.T) {
		regular := writeLoginFile(t, dir, "regular", "credential")
		for _, tt := range []struct {
			name string
			o    vault.LoginOptions
			want string
		}{
			{"approle role_id_file", vault.LoginOptions{Method: vault.LoginAppRole, RoleIDFile: fifo, SecretIDFile: regular}, "approle role_id_file: " + pipe},
			{"approle secret_id_file", vault.LoginOptions{Method: vault.LoginAppRole, RoleIDFile: regular, SecretIDFile: fifo}, "approle secret_id_file: " + pipe},
			{"kubernetes jwt_file", vault.LoginOptions{Method: vault.LoginKubernetes, Role: "keytrail", JWTFile: fifo}, "kubernetes jwt_file: " + pipe},
			{"token_file", vault.LoginOptions{Method: vault.LoginTokenFile, TokenFile: fifo}, "token_file: " + pipe},
		} {
			c, err := vault.NewClient(vault.ClientOptions{Address: "http://127.0.0.1:1", NoToken: true, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			o := tt.o
			o.Client = c
			l, err := vault.NewLogin(o)
			if err != nil {
				t.Fatal(err)
			}
			err = brokertest.ReturnsWithin(t, "Start with a FIFO as "+tt.name, func() error { return l.Start(context.Background()) })
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Start with a FIFO as %s = %v, want an error containing %q", tt.name, err, tt.want)
			}
			if got := loginErrOf(err).Reason; got != vault.ReasonConfig {
				t.Errorf("Start with a FIFO as %s: reason %q, want %q", tt.name, got, vault.ReasonConfig)
			}
		}
	})
}

// TestTokenFileWatchRefusesNonRegular: Run polls vault.token_file for a new
// token. When the file is replaced by a named pipe, the poll reports it
// unreadable (naming what it is) and keeps the current token. Before, the
// poll blocked forever in open: Run no longer noticed a new token nor
// returned when its context ended.
func TestTokenFileWatchRefusesNonRegular(t *testing.T) {
	f := newOwnTokenVault(t, 3600)
	dir := t.TempDir()
	tokenFile := writeLoginFile(t, dir, "token", "hvs.static")
	var logs loginLogBuffer
	_, c, stop := startRun(t, f, vault.LoginOptions{
		Method: vault.LoginTokenFile, TokenFile: tokenFile, PollInterval: 10 * time.Millisecond,
		Logger: newLoginLogger(&logs),
	}, nil)
	fifo := makeFIFO(t, dir, "token.fifo")
	if err := os.Rename(fifo, tokenFile); err != nil {
		t.Fatal(err)
	}
	want := tokenFile + ": is a named pipe, not a regular file"
	waitLogin(t, 10*time.Second, "the poll to report the named pipe", func() bool {
		return strings.Contains(logs.String(), "vault token file unreadable") && strings.Contains(logs.String(), want)
	})
	stop()
	if got := c.Token(); got != "hvs.static" {
		t.Errorf("token = %q after the file became a pipe, want the current one kept", got)
	}
}

// TestCredentialFilesFollowSymlinks: Kubernetes mounts a Secret (and a
// projected service-account token) as a chain of symlinks (token ->
// ..data/token, ..data -> ..<timestamp>) and rotates it by swapping
// ..data; the files are read through the links, each read seeing the
// current one. A CA bundle so mounted loads too.
func TestCredentialFilesFollowSymlinks(t *testing.T) {
	dir := t.TempDir()
	caPEM := selfSignedPEM(t)
	version := func(stamp, token string) {
		t.Helper()
		d := filepath.Join(dir, stamp)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "token"), []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "ca.crt"), caPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		// Swap ..data atomically, as the kubelet does.
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(stamp, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..2026_11_29_10_00_00.1", "hvs.first")
	for _, name := range []string{"token", "ca.crt"} {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	token := filepath.Join(dir, "token")
	if got, err := vault.ReadCredentialFile(token); err != nil || got != "hvs.first" {
		t.Fatalf("ReadCredentialFile(%s) = %q, %v; want hvs.first", token, got, err)
	}
	version("..2026_11_29_11_00_00.2", "hvs.second")
	if got, err := vault.ReadCredentialFile(token); err != nil || got != "hvs.second" {
		t.Errorf("ReadCredentialFile(%s) after the rotation = %q, %v; want hvs.second", token, got, err)
	}
	if _, err := vault.LoadCAFile(filepath.Join(dir, "ca.crt")); err != nil {
		t.Errorf("LoadCAFile(ca.crt symlink) = %v", err)
	}
	if _, err := vault.NewClient(vault.ClientOptions{Address: "https://127.0.0.1:8200", TokenFile: token, CAFile: filepath.Join(dir, "ca.crt")}); err != nil {
		t.Errorf("NewClient with symlinked token_file and ca_file = %v", err)
	}
}
