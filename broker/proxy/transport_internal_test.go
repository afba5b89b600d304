package proxy

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
	"weak"

	"github.com/keytrail/keytrail/policies"
)

// A grant's transport is resolved once per grant and policy and found
// again without allocating (every proxied request asks). A new policy
// (a reload) resolves it again: built from the same upstream, CA bundle and
// allow_private it is the same connection pool; a change of any of them,
// the bundle's bytes under the same path included, builds a new one.
func TestTransportCachedPerGrantAndPolicy(t *testing.T) {
	p := &Proxy{o: Options{MaxIdleConnsPerHost: 2, Resolver: net.DefaultResolver}, transports: map[string]*grantTransport{}}
	p.o.Timeouts.defaults()
	g := &policies.Grant{Name: "stripe", Kind: "proxy", Proxy: &policies.ProxyGrant{Upstream: "https://api.stripe.example"}}
	gen1 := new(policies.Policy) // a policy's identity is all transport looks at here
	gt, err := p.transport(gen1, g)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := p.transport(gen1, g); err != nil || again != gt {
		t.Fatalf("second call: %p, %v; want the first transport %p", again, err, gt)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = p.transport(gen1, g) }); n != 0 {
		t.Errorf("cached transport: %v allocations, want 0", n)
	}
	gen2 := new(policies.Policy)
	if same, err := p.transport(gen2, g); err != nil || same.rt != gt.rt {
		t.Errorf("a reload that changes nothing of the grant: %v, %v; want the same connection pool", same, err)
	}

	ca := filepath.Join(t.TempDir(), "ca.pem")
	writeCA := func(name string) {
		t.Helper()
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	withCA := &policies.Grant{Name: "stripe", Kind: "proxy", Proxy: &policies.ProxyGrant{Upstream: "https://api2.stripe.example", AllowPrivate: true, CAFile: ca}}
	for _, c := range []struct {
		name   string
		g      *policies.Grant
		before func()
	}{
		{"upstream", &policies.Grant{Name: "stripe", Kind: "proxy", Proxy: &policies.ProxyGrant{Upstream: "https://api2.stripe.example"}}, nil},
		{"allow_private", &policies.Grant{Name: "stripe", Kind: "proxy", Proxy: &policies.ProxyGrant{Upstream: "https://api2.stripe.example", AllowPrivate: true}}, nil},
		{"ca_file", withCA, func() { writeCA("ca-1") }},
		{"ca_file's bytes", withCA, func() { writeCA("ca-2") }},
	} {
		if c.before != nil {
			c.before()
		}
		prev := p.transports["stripe"]
		nt, err := p.transport(new(policies.Policy), c.g)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if nt.rt == prev.rt {
			t.Errorf("%s changed: the old connection pool was kept", c.name)
		}
	}
}

// TestTransportKeepsNoOldPolicy: a grant's transport remembered the
// policy it was resolved for by pointer, so a reload's old policy (its
// grants, workloads and ca_file bytes) stayed in memory for as long as
// one of its grants had no request under a newer policy: for a grant
// removed by the reload, for good, and with N grants up to N old policies
// at once. The policy is now remembered weakly: released once nothing else
// holds it, and a request of the new policy still finds the transport kept.
func TestTransportKeepsNoOldPolicy(t *testing.T) {
	p := &Proxy{o: Options{MaxIdleConnsPerHost: 2, Resolver: net.DefaultResolver}, transports: map[string]*grantTransport{}}
	p.o.Timeouts.defaults()
	stripe := &policies.Grant{Name: "stripe", Kind: "proxy", Proxy: &policies.ProxyGrant{Upstream: "https://api.stripe.example"}}
	github := &policies.Grant{Name: "github", Kind: "proxy", Proxy: &policies.ProxyGrant{Upstream: "https://api.github.example"}}
	old := resolvedUnderOldPolicy(t, p, stripe, github)

	cur := new(policies.Policy) // the reload's: only stripe is asked for under it
	gt, err := p.transport(cur, stripe)
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	runtime.GC()
	if old.Value() != nil {
		t.Error("the old policy is still in memory after a reload: the transport cache holds it")
	}
	if again, err := p.transport(cur, stripe); err != nil || again != gt {
		t.Errorf("the current policy's transport: %p, %v; want the one resolved for it, %p", again, err, gt)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = p.transport(cur, stripe) }); n != 0 {
		t.Errorf("cached transport: %v allocations, want 0", n)
	}
	runtime.KeepAlive(cur)
}

// resolvedUnderOldPolicy resolves the transport of each grant under a
// policy nothing else holds, and returns that policy, weakly.
func resolvedUnderOldPolicy(t *testing.T, p *Proxy, grants ...*policies.Grant) weak.Pointer[policies.Policy] {
	t.Helper()
	old := new(policies.Policy)
	for _, g := range grants {
		if _, err := p.transport(old, g); err != nil {
			t.Fatal(err)
		}
	}
	return weak.Make(old)
}

// TestTransportKeepsNoCopyOfTheCABundle: to tell a changed bundle under
// the same path from an unchanged one, each grant's cache entry kept the
// bundle's bytes as a string: a copy per grant naming the ca_file (a
// system bundle with a private CA appended is some 200 KB), none of it
// needed once the pool is built. Whether the bundle changed is now asked
// of the pools (x509.CertPool.Equal): the entries keep no more than their
// transports do.
func TestTransportKeepsNoCopyOfTheCABundle(t *testing.T) {
	p := &Proxy{o: Options{MaxIdleConnsPerHost: 2, Resolver: net.DefaultResolver}, transports: map[string]*grantTransport{}}
	p.o.Timeouts.defaults()
	ca := filepath.Join(t.TempDir(), "bundle.pem")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "private CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	// One certificate and 256 KiB of the text bundles carry between them.
	bundle := append(bytes.Repeat([]byte("# Issuer: CN=Some Root CA O=Example\n"), 256<<10/37), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	if err := os.WriteFile(ca, bundle, 0o600); err != nil {
		t.Fatal(err)
	}
	const grants = 40
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc
	pol := new(policies.Policy)
	for i := range grants {
		g := &policies.Grant{Name: fmt.Sprint("g", i), Kind: "proxy", Proxy: &policies.ProxyGrant{Upstream: "https://api.example", CAFile: ca}}
		if _, err := p.transport(pol, g); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	if kept := int64(ms.HeapAlloc) - int64(before); kept > int64(grants*len(bundle)/4) {
		t.Errorf("%d grants naming a %d-byte ca_file keep %d bytes in memory, want less than a quarter of a bundle each", grants, len(bundle), kept)
	}
	runtime.KeepAlive(pol)
	runtime.KeepAlive(p)
}
