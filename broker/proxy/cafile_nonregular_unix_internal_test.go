//go:build unix

package proxy

import (
	"encoding/pem"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// TestTransportCAFileRefusesNonRegular: a proxy grant's ca_file is read as
// a policy file is when the grant's transport is built (by the first
// request after a policy change). A named pipe, a device or a directory is
// refused, naming the grant, the field, the path and what it is; before, a
// FIFO blocked the request in open forever (and every later one to the
// grant), and /dev/zero was read until memory ran out. A symlink to a CA
// bundle is read and trusted as the bundle is. A missing file's message is
// unchanged.
func TestTransportCAFileRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "pipe.pem")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	_, devErr := os.Stat("/dev/zero")
	p := &Proxy{o: Options{MaxIdleConnsPerHost: 2, Resolver: net.DefaultResolver}, transports: map[string]*grantTransport{}}
	p.o.Timeouts.defaults()
	grant := func(caFile string) *policies.Grant {
		return &policies.Grant{Name: "stripe", Kind: "proxy", Proxy: &policies.ProxyGrant{Upstream: "https://api.stripe.example", CAFile: caFile}}
	}
	// The FIFO first: on the old code the build blocks there and the test
	// fails before /dev/zero would be read without end.
	for _, tt := range []struct{ path, want string }{
		{fifo, "grant stripe: ca_file: " + fifo + ": is a named pipe, not a regular file"},
		{"/dev/zero", "grant stripe: ca_file: /dev/zero: is a character device, not a regular file"},
		{dir, "grant stripe: ca_file: " + dir + ": is a directory, not a regular file"},
		{missing, "grant stripe: ca_file: open " + missing + ": no such file or directory"}, // unchanged
	} {
		if tt.path == "/dev/zero" && devErr != nil {
			continue
		}
		err := brokertest.ReturnsWithin(t, "transport with ca_file "+tt.path, func() error {
			_, err := p.transport(new(policies.Policy), grant(tt.path)) // a policy of its own: resolved anew
			return err
		})
		if err == nil || err.Error() != tt.want {
			t.Errorf("transport with ca_file %s = %v, want %q", tt.path, err, tt.want)
		}
	}

	// A symlink to the bundle that verifies the upstream.
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.pem")
	if err := os.Symlink(ca, link); err != nil {
		t.Fatal(err)
	}
	g := &policies.Grant{Name: "local", Kind: "proxy", Proxy: &policies.ProxyGrant{Upstream: srv.URL, CAFile: link, AllowPrivate: true}}
	gt, err := p.transport(new(policies.Policy), g)
	if err != nil {
		t.Fatalf("transport with ca_file a symlink to the bundle = %v, want ok", err)
	}
	t.Cleanup(gt.rt.CloseIdleConnections)
	req, err := http.NewRequest(http.MethodGet, srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := gt.rt.RoundTrip(req)
	if err != nil {
		t.Fatalf("request through the transport with ca_file a symlink to the bundle = %v, want ok", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status %d, want 200", resp.StatusCode)
	}
}
