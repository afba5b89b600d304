//go:build unix

package authn_test

import (
	"context"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/authn"
	"github.com/keytrail/keytrail/broker/authn/authntest"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// TestCAFileRefusesNonRegular: an issuer's ca_file is read as a policy file
// is. A named pipe, a device or a directory is refused by New (at start and
// on every policy reload, which builds a new Verifier), naming the policy
// file, the field, the path and what it is; before, a FIFO blocked New in
// open forever and /dev/zero was read until memory ran out. A symlink to a
// CA bundle is read and trusted as the bundle is. A missing file's message
// is unchanged.
func TestCAFileRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "pipe.pem")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	_, devErr := os.Stat("/dev/zero")
	newWith := func(caFile string) (*authn.Verifier, error) {
		return authn.New(context.Background(), authn.Options{Issuers: []policies.Issuer{{
			Name: "k8s", Issuer: "https://kubernetes.default.svc", JWKSURL: "https://kubernetes.default.svc/openid/v1/jwks",
			Audiences: []string{"keytrail"}, Algorithms: []string{"ES256"}, MaxTokenLifetime: policies.Duration(time.Hour),
			CAFile: caFile, Source: "p.yaml: issuers[0]",
		}}})
	}
	// The FIFO first: on the old code New blocks there and the test fails
	// before /dev/zero would be read without end.
	for _, tt := range []struct{ path, want string }{
		{fifo, "authn: p.yaml: issuers[0].ca_file: read: " + fifo + ": is a named pipe, not a regular file"},
		{"/dev/zero", "authn: p.yaml: issuers[0].ca_file: read: /dev/zero: is a character device, not a regular file"},
		{dir, "authn: p.yaml: issuers[0].ca_file: read: " + dir + ": is a directory, not a regular file"},
		{missing, "authn: p.yaml: issuers[0].ca_file: read: open " + missing + ": no such file or directory"}, // unchanged
	} {
		if tt.path == "/dev/zero" && devErr != nil {
			continue
		}
		err := brokertest.ReturnsWithin(t, "New with ca_file "+tt.path, func() error { _, err := newWith(tt.path); return err })
		if err == nil || err.Error() != tt.want {
			t.Errorf("New with ca_file %s = %v, want %q", tt.path, err, tt.want)
		}
	}

	// A symlink to the bundle that verifies the JWKS server.
	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(iss.Handler())
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	iss.URL = srv.URL
	link := filepath.Join(dir, "link.pem")
	if err := os.Symlink(writeCA(t, srv), link); err != nil {
		t.Fatal(err)
	}
	v := verifierFor(t, iss.URL, srv.URL+authntest.JWKSPath, func(o *authn.Options) { o.Issuers[0].CAFile = link })
	if _, err := v.Authenticate(context.Background(), sign(t, iss.Key(), nil, claims(iss))); err != nil {
		t.Errorf("Authenticate() with ca_file a symlink to the bundle = %v, want ok", err)
	}
}
