//go:build unix

package policies

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// oddCAPolicy is a valid policy, named file, whose issuer and proxy grant
// both name ca as their ca_file (written as a JSON string: any bytes).
func oddCAPolicy(t *testing.T, file, ca string) *Policy {
	t.Helper()
	q, err := json.Marshal(ca)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse(file, []byte(doc(map[string]string{
		"issuers": `[{name: i, issuer: "https://issuer.example", jwks_url: "https://issuer.example/jwks", audiences: [keytrail], algorithms: [RS256], ca_file: ` + string(q) + `}]`,
		"grants":  proxyGrant(`upstream: "https://api.example.com", ca_file: ` + string(q) + `, secret: {vault_kv: secret/data/x, field: key}, inject: {header: X-Api-Key}, paths: ["/x"]`),
	})))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestProblemsQuoteOddFileNames: a problem is one line (keytrail policy
// check prints one a line, the server logs each). A policy file or ca_file
// whose name holds a newline was printed as is, splitting the problem in
// two lines and letting the second read as a problem of its own. The file
// of a problem, the ca_file a problem or warning names, and the issuer's
// Source (what other packages name it by) are now shown as explain shows a
// subject and a dangling link its target: as they are when printable, else
// Go-quoted. Printable names are unchanged.
func TestProblemsQuoteOddFileNames(t *testing.T) {
	dir := t.TempDir()
	forged := "x.yaml: grants[0]: forged problem"

	t.Run("policy-files", func(t *testing.T) {
		pdir := filepath.Join(dir, "policies")
		if err := os.Mkdir(pdir, 0o700); err != nil {
			t.Fatal(err)
		}
		bad := "bad\n" + forged + ".yaml"
		if err := os.WriteFile(filepath.Join(pdir, bad), []byte("version: 2\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(pdir, "odd\tname.YAML"), []byte("version: 1\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := loadGuarded(t, pdir)
		want := []string{
			strconv.Quote(filepath.Join(pdir, "odd\tname.YAML")) + ": " + misnamedMessage,
		}
		if got := problemStrings(err); strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("Load problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if err := os.Remove(filepath.Join(pdir, "odd\tname.YAML")); err != nil {
			t.Fatal(err)
		}
		_, err = loadGuarded(t, pdir)
		got := problemStrings(err)
		if len(got) != 1 || !strings.HasPrefix(got[0], strconv.Quote(filepath.Join(pdir, bad))+": ") {
			t.Errorf("Load problems = %q, want one, naming the file %s", got, strconv.Quote(filepath.Join(pdir, bad)))
		}
	})

	t.Run("ca-files", func(t *testing.T) {
		missing := filepath.Join(dir, "missing\n"+forged+".pem")
		fifo := filepath.Join(dir, "pipe\n"+forged+".pem")
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			t.Fatal(err)
		}
		noPEM := filepath.Join(dir, "nopem\n"+forged+".pem")
		if err := os.WriteFile(noPEM, []byte("not a certificate\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		dated := filepath.Join(dir, "dated\n"+forged+".pem")
		if err := os.WriteFile(dated, testCAPEM(t, "ca"), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name, ca string
			want     string // the issuer's problem or, for dated, warning
		}{
			{"missing", missing, "cannot read " + strconv.Quote(missing) + ": no such file or directory"},
			{"fifo", fifo, "cannot read " + strconv.Quote(fifo) + ": is a named pipe, not a regular file"},
			{"no-pem", noPEM, strconv.Quote(noPEM) + " holds no PEM certificate"},
			{"dated", dated, strconv.Quote(dated) + `: certificate "ca" expired at `},
		} {
			t.Run(tc.name, func(t *testing.T) {
				p := oddCAPolicy(t, "pol\n"+forged, tc.ca)
				var warnings []*Problem
				var err error
				returnsWithin(t, "CheckFiles", func() error {
					warnings, err = p.CheckFiles(time.Now().Add(2 * 365 * 24 * time.Hour))
					return nil
				})
				got := problemStrings(err)
				if tc.name == "dated" {
					got = nil
					for _, w := range warnings {
						got = append(got, w.Error())
					}
				}
				prefix := strconv.Quote("pol\n"+forged) + ": issuers[0].ca_file: "
				if len(got) != 2 || !strings.HasPrefix(got[0], prefix+tc.want) {
					t.Errorf("CheckFiles = %q, want 2 starting with %q", got, prefix+tc.want)
				}
				for _, g := range got {
					if strings.Contains(g, "\n") {
						t.Errorf("problem %q is more than one line", g)
					}
				}
			})
		}
		if got, want := oddCAPolicy(t, "pol\n"+forged, missing).Issuers()[0].Source, strconv.Quote("pol\n"+forged)+": issuers[0]"; got != want {
			t.Errorf("Issuer.Source = %q, want %q", got, want)
		}
	})
}
