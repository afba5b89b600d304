//go:build unix

package policies

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// checkFilesGuarded is p.CheckFiles(now)'s problems, run by returnsWithin.
func checkFilesGuarded(t *testing.T, p *Policy, now time.Time) []string {
	t.Helper()
	err := returnsWithin(t, "CheckFiles", func() error { _, err := p.CheckFiles(now); return err })
	var got []string
	var ve *ValidationError
	if errors.As(err, &ve) {
		for _, p := range ve.Problems {
			got = append(got, p.Error())
		}
	} else if err != nil {
		t.Fatalf("CheckFiles() = %v, want a *ValidationError or nil", err)
	}
	return got
}

// TestCheckFilesRefusesNonRegular: an issuer's or a proxy grant's ca_file
// is read as a policy file is: a named pipe, a device or a directory is a
// problem naming the policy file, the field, the path and what it is; a
// symlink to a regular file is read. CheckFiles runs at start and on every
// reload (and for keytrail policy check --files): before, a FIFO there
// blocked it in open forever (the reload holding its lock), and /dev/zero
// was read until memory ran out. A missing file's message is unchanged.
func TestCheckFilesRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(good, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.pem")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "pipe.pem")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	_, devErr := os.Stat("/dev/zero")

	issuer := func(ca string) map[string]string {
		return map[string]string{"issuers": `[{name: i, issuer: "https://issuer.example", jwks_url: "https://issuer.example/jwks", audiences: [keytrail], algorithms: [RS256], ca_file: "` + ca + `"}]`}
	}
	proxy := func(ca string) map[string]string {
		return map[string]string{"grants": proxyGrant(`upstream: "https://api.example.com", ca_file: "` + ca + `", secret: {vault_kv: secret/data/x, field: key}, inject: {header: X-Api-Key}, paths: ["/x"]`)}
	}
	for _, site := range []struct {
		name  string
		over  func(string) map[string]string
		field string // the problem's prefix: file, field
		line  string
	}{
		{"issuer", issuer, "t.yaml: issuers[0].ca_file: ", " (line 2)"},
		{"proxy", proxy, "t.yaml: grants[0].proxy.ca_file: ", " (line 4)"},
	} {
		// On the old code each subtest blocks on its first case, the FIFO,
		// and fails there (before /dev/zero would be read without end).
		t.Run(site.name, func(t *testing.T) {
			for _, tt := range []struct {
				path string
				want string // "" = no problem
			}{
				{fifo, "cannot read " + fifo + ": is a named pipe, not a regular file"},
				{"/dev/zero", "cannot read /dev/zero: is a character device, not a regular file"},
				{dir, "cannot read " + dir + ": is a directory, not a regular file"},
				{missing, "cannot read " + missing + ": no such file or directory"}, // unchanged
				{link, ""},
				{good, ""},
			} {
				if tt.path == "/dev/zero" && devErr != nil {
					continue
				}
				p, err := Parse("t.yaml", []byte(doc(site.over(tt.path))))
				if err != nil {
					t.Fatalf("Parse() = %v", err)
				}
				got := checkFilesGuarded(t, p, now)
				var want []string
				if tt.want != "" {
					want = []string{site.field + tt.want + site.line}
				}
				if len(got) != len(want) || (len(want) == 1 && got[0] != want[0]) {
					t.Errorf("ca_file %s: problems %q, want %q", tt.path, got, want)
				}
			}
		})
	}
}
