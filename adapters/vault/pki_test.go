package vault

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/policies"
)

const (
	pkiIssue  = "PUT /v1/pki/issue/workloads"
	pkiRevoke = "PUT /v1/pki/revoke"
	pkiSerial = "3d:0a:7f:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:01:02"
	pkiKeyPEM = "-----BEGIN PRIVATE KEY-----\nTEST-KEY-SECRET\n-----END PRIVATE KEY-----\n"
)

// testCA issues leaf certificates for the fake Vault's answers.
type testCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
	pem  string
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{key: key, cert: cert, pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

// leaf returns a PEM certificate for payments-api with the given serial,
// URI SAN (none when "") and NotAfter.
func (ca *testCA) leaf(t *testing.T, serial, uri string, notAfter time.Time) string {
	t.Helper()
	var uris []string
	if uri != "" {
		uris = []string{uri}
	}
	return ca.leafWith(t, serial, "payments-api", uris, notAfter)
}

// leafWith returns a PEM certificate with the given serial, common name,
// URI SANs and NotAfter.
func (ca *testCA) leafWith(t *testing.T, serial, cn string, uris []string, notAfter time.Time) string {
	t.Helper()
	sn, err := parseSerial(serial)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: cn}, NotBefore: t0.Add(-30 * time.Second), NotAfter: notAfter}
	for _, uri := range uris {
		u, err := url.Parse(uri)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func pkiReq(mut func(*broker.MintRequest)) broker.MintRequest {
	r := broker.MintRequest{
		IssuanceID: "iss_01JTESTPKI",
		Workload:   "payments-api",
		Owner:      "team-payments",
		SessionID:  "ses_abc",
		Grant: policies.Grant{
			Name: "payments-cert", Kind: broker.KindPKI, TTL: policies.Duration(15 * time.Minute),
			PKI: &policies.PKIGrant{Path: "pki/issue/workloads"},
		},
		TTL: 15 * time.Minute,
		Now: t0,
	}
	if mut != nil {
		mut(&r)
	}
	return r
}

func wantIssueBody(uri, ttl string) map[string]any {
	return map[string]any{
		"common_name":          "payments-api",
		"exclude_cn_from_sans": true,
		"uri_sans":             uri,
		"ttl":                  ttl,
		"format":               "pem",
		"private_key_format":   "pkcs8",
	}
}

func issueReply(certPEM, caPEM, serial string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, map[string]any{"data": map[string]any{
			"certificate": certPEM, "private_key": pkiKeyPEM, "private_key_type": "ec",
			"issuing_ca": caPEM, "ca_chain": []string{caPEM}, "serial_number": serial, "expiration": 1,
		}})
	}
}

func TestPKIMinterMint(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	const spiffe = "spiffe://keytrail/payments-api"
	good := ca.leaf(t, pkiSerial, spiffe, t0.Add(15*time.Minute))
	revokeBody := map[string]any{"serial_number": pkiSerial}
	tests := []struct {
		name     string
		req      broker.MintRequest
		opts     PKIMinterOptions
		now      time.Time
		issue    string // route of the issue call; "" = none expected
		body     map[string]any
		answer   http.HandlerFunc
		revoke   string // route of a revoke call expected
		want     *broker.Credential
		wantErr  errShape
		notInErr string
	}{
		{
			name:   "ok/spiffe-uri-san",
			req:    pkiReq(nil),
			issue:  pkiIssue,
			body:   wantIssueBody(spiffe, "900s"),
			answer: issueReply(good, ca.pem, pkiSerial),
			want: &broker.Credential{
				AccessToken: good,
				Fields: map[string]any{
					"certificate": good, "private_key": pkiKeyPEM, "private_key_type": "ec", "issuing_ca": ca.pem,
					"ca_chain": []string{ca.pem}, "serial_number": pkiSerial, "uri_san": spiffe, "expiration": t0.Add(15 * time.Minute).Unix(),
				},
				Refs: broker.CredentialRefs{Serial: pkiSerial, Mount: "pki", ExpiresAt: t0.Add(15 * time.Minute)},
			},
		},
		{
			name: "ok/grant-trust-domain-issuer-path-time-spent",
			req: pkiReq(func(r *broker.MintRequest) {
				r.Grant.PKI = &policies.PKIGrant{Path: "pki_int/issuer/default/issue/web", TrustDomain: "prod.example.org"}
			}),
			now:    t0.Add(10*time.Second + 300*time.Millisecond),
			issue:  "PUT /v1/pki_int/issuer/default/issue/web",
			body:   wantIssueBody("spiffe://prod.example.org/payments-api", "889s"),
			answer: issueReply(ca.leaf(t, pkiSerial, "spiffe://prod.example.org/payments-api", t0.Add(15*time.Minute+2*time.Second)), ca.pem, pkiSerial),
			want: &broker.Credential{
				Fields: map[string]any{"uri_san": "spiffe://prod.example.org/payments-api", "expiration": t0.Add(15*time.Minute + 2*time.Second).Unix()},
				Refs:   broker.CredentialRefs{Serial: pkiSerial, Mount: "pki_int", ExpiresAt: t0.Add(15 * time.Minute)},
			},
		},
		{
			name:   "ok/options-trust-domain",
			req:    pkiReq(nil),
			opts:   PKIMinterOptions{TrustDomain: "corp.internal"},
			issue:  pkiIssue,
			body:   wantIssueBody("spiffe://corp.internal/payments-api", "900s"),
			answer: issueReply(ca.leaf(t, pkiSerial, "spiffe://corp.internal/payments-api", t0.Add(time.Minute)), ca.pem, pkiSerial),
			want: &broker.Credential{
				Fields: map[string]any{"uri_san": "spiffe://corp.internal/payments-api", "expiration": t0.Add(time.Minute).Unix()},
				Refs:   broker.CredentialRefs{Serial: pkiSerial, Mount: "pki", ExpiresAt: t0.Add(time.Minute)},
			},
		},
		{
			name:     "fail/uri-san-not-allowed-revoked",
			req:      pkiReq(nil),
			issue:    pkiIssue,
			body:     wantIssueBody(spiffe, "900s"),
			answer:   issueReply(ca.leaf(t, pkiSerial, "", t0.Add(15*time.Minute)), ca.pem, pkiSerial),
			revoke:   pkiRevoke,
			wantErr:  errShape{unavailable, ReasonConfig},
			notInErr: "TEST-KEY-SECRET",
		},
		{
			// SPEC-ADDITIONS: exactly one URI SAN, common name = workload.
			name:    "fail/extra-uri-san-revoked",
			req:     pkiReq(nil),
			issue:   pkiIssue,
			body:    wantIssueBody(spiffe, "900s"),
			answer:  issueReply(ca.leafWith(t, pkiSerial, "payments-api", []string{spiffe, "spiffe://keytrail/admin"}, t0.Add(15*time.Minute)), ca.pem, pkiSerial),
			revoke:  pkiRevoke,
			wantErr: errShape{unavailable, ReasonConfig},
		},
		{
			name:    "fail/other-common-name-revoked",
			req:     pkiReq(nil),
			issue:   pkiIssue,
			body:    wantIssueBody(spiffe, "900s"),
			answer:  issueReply(ca.leafWith(t, pkiSerial, "admin", []string{spiffe}, t0.Add(15*time.Minute)), ca.pem, pkiSerial),
			revoke:  pkiRevoke,
			wantErr: errShape{unavailable, ReasonConfig},
		},
		{
			// No serial_number in the answer: revoked by the certificate's
			// own serial (revokeBody), not left valid.
			name:    "fail/no-serial-revoked-by-certificate-serial",
			req:     pkiReq(nil),
			issue:   pkiIssue,
			body:    wantIssueBody(spiffe, "900s"),
			answer:  issueReply(good, ca.pem, ""),
			revoke:  pkiRevoke,
			wantErr: errShape{unavailable, ReasonBadResponse},
		},
		{
			name:    "fail/serial-mismatch-revoked",
			req:     pkiReq(nil),
			issue:   pkiIssue,
			body:    wantIssueBody(spiffe, "900s"),
			answer:  issueReply(ca.leaf(t, "01:02", spiffe, t0.Add(15*time.Minute)), ca.pem, pkiSerial),
			revoke:  pkiRevoke,
			wantErr: errShape{unavailable, ReasonBadResponse},
		},
		{
			name:    "fail/outlives-grant-revoked",
			req:     pkiReq(nil),
			issue:   pkiIssue,
			body:    wantIssueBody(spiffe, "900s"),
			answer:  issueReply(ca.leaf(t, pkiSerial, spiffe, t0.Add(time.Hour)), ca.pem, pkiSerial),
			revoke:  pkiRevoke,
			wantErr: errShape{unavailable, ReasonBadResponse},
		},
		{
			name:    "fail/garbage-certificate-revoked",
			req:     pkiReq(nil),
			issue:   pkiIssue,
			body:    wantIssueBody(spiffe, "900s"),
			answer:  issueReply("not a pem", ca.pem, pkiSerial),
			revoke:  pkiRevoke,
			wantErr: errShape{unavailable, ReasonBadResponse},
		},
		{
			name:    "fail/no-data",
			req:     pkiReq(nil),
			issue:   pkiIssue,
			body:    wantIssueBody(spiffe, "900s"),
			answer:  func(w http.ResponseWriter, r *http.Request) { reply(w, 200, map[string]any{"warnings": []string{"x"}}) },
			wantErr: errShape{unavailable, ReasonBadResponse},
		},
		{
			name:    "fail/role-rejects-400",
			req:     pkiReq(nil),
			issue:   pkiIssue,
			body:    wantIssueBody(spiffe, "900s"),
			answer:  replyRaw(400, `{"errors":["URI Subject Alternative Names are not allowed in this role"]}`),
			wantErr: errShape{unavailable, ReasonRejected},
		},
		{
			name:    "fail/denied-403",
			req:     pkiReq(nil),
			issue:   pkiIssue,
			body:    wantIssueBody(spiffe, "900s"),
			answer:  replyRaw(403, `{"errors":["permission denied"]}`),
			wantErr: errShape{unavailable, ReasonDenied},
		},
		{
			name:    "fail/sign-path-needs-csr",
			req:     pkiReq(func(r *broker.MintRequest) { r.Grant.PKI.Path = "pki/sign/workloads" }),
			wantErr: errShape{unavailable, ReasonConfig},
		},
		{
			name:    "fail/uppercase-trust-domain",
			req:     pkiReq(func(r *broker.MintRequest) { r.Grant.PKI.TrustDomain = "Example.org" }),
			wantErr: errShape{unavailable, ReasonConfig},
		},
		{
			name:    "fail/wrong-kind",
			req:     pkiReq(func(r *broker.MintRequest) { r.Grant.Kind = broker.KindVaultDynamic }),
			wantErr: errShape{unavailable, ReasonConfig},
		},
		{
			name:    "fail/ttl-spent",
			req:     pkiReq(nil),
			now:     t0.Add(15*time.Minute - 500*time.Millisecond),
			wantErr: errShape{invalid, "ttl_too_short"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			routes := map[string]http.HandlerFunc{}
			if tc.issue != "" {
				routes[tc.issue] = expectBody(t, tc.body, tc.answer)
			}
			if tc.revoke != "" {
				routes[tc.revoke] = expectBody(t, revokeBody, replyRaw(200, `{"data":{"revocation_time":1}}`))
			}
			f := newFakeVault(t, routes)
			now := tc.now
			if now.IsZero() {
				now = t0
			}
			o := tc.opts
			o.Client = f.client(t)
			o.Grant = func(string) (*policies.Grant, bool) { return nil, false }
			o.Now = func() time.Time { return now }
			m, err := NewPKIMinter(o)
			if err != nil {
				t.Fatal(err)
			}
			got, err := m.Mint(context.Background(), tc.req)
			if diff := cmp.Diff(tc.wantErr, shapeOf(err)); diff != "" {
				t.Errorf("Mint() error = %v, want %+v", err, tc.wantErr)
			}
			if tc.notInErr != "" && err != nil && strings.Contains(err.Error(), tc.notInErr) {
				t.Errorf("Mint() error leaks %q: %v", tc.notInErr, err)
			}
			if tc.want != nil && got != nil && tc.want.AccessToken == "" {
				// Cases that only check some fields.
				gotSome := &broker.Credential{Fields: map[string]any{"uri_san": got.Fields["uri_san"], "expiration": got.Fields["expiration"]}, Refs: got.Refs}
				got = gotSome
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Mint() credential (-want +got):\n%s", diff)
			}
			calls := 0
			if tc.issue != "" {
				calls++
			}
			if tc.revoke != "" {
				calls++
				if n := f.count(tc.revoke); n != 1 {
					t.Errorf("revoke calls = %d, want 1", n)
				}
			}
			if n := f.total(); n != calls {
				t.Errorf("Vault calls = %d, want %d", n, calls)
			}
		})
	}
}

func TestPKIMinterRevoke(t *testing.T) {
	t.Parallel()
	grants := map[string]*policies.Grant{
		"payments-cert": {Name: "payments-cert", Kind: broker.KindPKI, PKI: &policies.PKIGrant{Path: "pki/issue/workloads"}},
		"web-cert":      {Name: "web-cert", Kind: broker.KindPKI, PKI: &policies.PKIGrant{Path: "pki_int/issuer/default/issue/web"}},
		"db":            {Name: "db", Kind: broker.KindVaultDynamic, VaultDynamic: &policies.VaultDynamicGrant{Path: "database/creds/x"}},
	}
	live := func(grant string) *broker.Issuance {
		return &broker.Issuance{ID: "iss_1", Grant: grant, ExpiresAt: t0.Add(time.Minute), Refs: broker.CredentialRefs{Serial: pkiSerial}}
	}
	expired := func(grant string) *broker.Issuance {
		is := live(grant)
		is.ExpiresAt = t0
		return is
	}
	// recorded is an issuance that records the mount that issued it.
	recorded := func(grant, mount string) *broker.Issuance {
		is := live(grant)
		is.Refs.Mount = mount
		return is
	}
	expiredAt := func(is *broker.Issuance) *broker.Issuance {
		is.ExpiresAt = t0
		return is
	}
	tests := []struct {
		name    string
		is      *broker.Issuance
		route   string
		answer  http.HandlerFunc
		wantErr errShape
	}{
		{"ok/revoked", live("payments-cert"), pkiRevoke, replyRaw(200, `{"data":{"revocation_time":1772366400}}`), errShape{}},
		{"ok/issuer-path-mount", live("web-cert"), "PUT /v1/pki_int/revoke", replyRaw(200, `{"data":{"revocation_time":1772366400}}`), errShape{}},
		{"ok/already-expired-warning", expired("payments-cert"), pkiRevoke, replyRaw(200, `{"warnings":["certificate with serial 3d:0a already expired; refusing to add to CRL"]}`), errShape{}},
		{"ok/tidied-after-expiry", expired("payments-cert"), pkiRevoke, replyRaw(400, `{"errors":["certificate with serial 3d:0a not found."]}`), errShape{}},
		{"ok/grant-gone-after-expiry", expired("gone"), "", nil, errShape{}},
		{"fail/not-found-while-valid", live("payments-cert"), pkiRevoke, replyRaw(400, `{"errors":["certificate with serial 3d:0a not found."]}`), errShape{unavailable, ReasonRejected}},
		{"ok/recorded-mount-grant-gone", recorded("gone", "pki"), pkiRevoke, replyRaw(200, `{"data":{"revocation_time":1772366400}}`), errShape{}},
		{"ok/recorded-mount-grant-moved", recorded("web-cert", "pki"), pkiRevoke, replyRaw(200, `{"data":{"revocation_time":1772366400}}`), errShape{}},
		{"ok/recorded-mount-grant-not-pki", recorded("db", "pki_int"), "PUT /v1/pki_int/revoke", replyRaw(200, `{"data":{"revocation_time":1772366400}}`), errShape{}},
		{"ok/recorded-mount-tidied-after-expiry", expiredAt(recorded("gone", "pki")), pkiRevoke, replyRaw(400, `{"errors":["certificate with serial 3d:0a not found."]}`), errShape{}},
		{"fail/recorded-mount-not-found-while-valid", recorded("gone", "pki"), pkiRevoke, replyRaw(400, `{"errors":["certificate with serial 3d:0a not found."]}`), errShape{unavailable, ReasonRejected}},
		{"fail/recorded-mount-traversal", recorded("payments-cert", "pki/../sys"), "", nil, errShape{unavailable, ReasonConfig}},
		{"fail/grant-gone-while-valid", live("gone"), "", nil, errShape{unavailable, ReasonConfig}},
		{"fail/grant-not-pki", live("db"), "", nil, errShape{unavailable, ReasonConfig}},
		{"fail/500", live("payments-cert"), pkiRevoke, replyRaw(500, `{"errors":["storage"]}`), errShape{unavailable, ReasonUnavailable}},
		{"fail/no-serial", &broker.Issuance{ID: "iss_1", Grant: "payments-cert"}, "", nil, errShape{invalid, "missing_serial"}},
		{"fail/nil", nil, "", nil, errShape{invalid, "missing_serial"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			routes := map[string]http.HandlerFunc{}
			if tc.route != "" {
				routes[tc.route] = expectBody(t, map[string]any{"serial_number": pkiSerial}, tc.answer)
			}
			f := newFakeVault(t, routes)
			m, err := NewPKIMinter(PKIMinterOptions{
				Client: f.client(t),
				Grant:  func(name string) (*policies.Grant, bool) { g, ok := grants[name]; return g, ok },
				Now:    func() time.Time { return t0 },
			})
			if err != nil {
				t.Fatal(err)
			}
			err = m.Revoke(context.Background(), tc.is)
			if diff := cmp.Diff(tc.wantErr, shapeOf(err)); diff != "" {
				t.Errorf("Revoke() = %v, want %+v", err, tc.wantErr)
			}
			want := 0
			if tc.route != "" {
				want = 1
			}
			if n := f.total(); n != want {
				t.Errorf("Vault calls = %d, want %d", n, want)
			}
		})
	}
}

// TestPKIMinterRevokesAfterGrantChanged mints a certificate, then changes
// what the policy in force says of its grant (removed, moved to another
// mount, renamed to a grant of another kind) and revokes the issuance the
// broker recorded from the credential: the certificate is revoked on the
// mount that issued it.
func TestPKIMinterRevokesAfterGrantChanged(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	const spiffe = "spiffe://keytrail/payments-api"
	good := ca.leaf(t, pkiSerial, spiffe, t0.Add(15*time.Minute))
	for _, tc := range []struct {
		name  string
		later map[string]*policies.Grant // the policy in force at revocation
	}{
		{"ok/grant-removed", map[string]*policies.Grant{}},
		{"ok/grant-moved-to-another-mount", map[string]*policies.Grant{
			"payments-cert": {Name: "payments-cert", Kind: broker.KindPKI, PKI: &policies.PKIGrant{Path: "pki_v2/issue/workloads"}},
		}},
		{"ok/name-reused-by-another-kind", map[string]*policies.Grant{
			"payments-cert": {Name: "payments-cert", Kind: broker.KindVaultDynamic, VaultDynamic: &policies.VaultDynamicGrant{Path: "database/creds/x"}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeVault(t, map[string]http.HandlerFunc{
				pkiIssue:  expectBody(t, wantIssueBody(spiffe, "900s"), issueReply(good, ca.pem, pkiSerial)),
				pkiRevoke: expectBody(t, map[string]any{"serial_number": pkiSerial}, replyRaw(200, `{"data":{"revocation_time":1772366400}}`)),
			})
			req := pkiReq(nil)
			inForce := map[string]*policies.Grant{req.Grant.Name: &req.Grant}
			m, err := NewPKIMinter(PKIMinterOptions{
				Client: f.client(t),
				Grant:  func(name string) (*policies.Grant, bool) { g, ok := inForce[name]; return g, ok },
				Now:    func() time.Time { return t0 },
			})
			if err != nil {
				t.Fatal(err)
			}
			cred, err := m.Mint(context.Background(), req)
			if err != nil {
				t.Fatalf("Mint() = %v", err)
			}
			// What the broker records (broker.Service.Exchange).
			is := &broker.Issuance{ID: req.IssuanceID, Grant: req.Grant.Name, Kind: broker.KindPKI, ExpiresAt: cred.Refs.ExpiresAt, Refs: cred.Refs}
			inForce = tc.later // a policy reload
			if err := m.Revoke(context.Background(), is); err != nil {
				t.Errorf("Revoke() after the grant changed = %v, want nil", err)
			}
			if n := f.count(pkiRevoke); n != 1 {
				t.Errorf("revoke calls on the issuing mount = %d, want 1", n)
			}
		})
	}
}

func TestNewPKIMinterValidates(t *testing.T) {
	t.Parallel()
	c := newFakeVault(t, nil).client(t)
	lookup := func(string) (*policies.Grant, bool) { return nil, false }
	for _, tc := range []struct {
		name string
		o    PKIMinterOptions
		ok   bool
	}{
		{"ok/defaults", PKIMinterOptions{Client: c, Grant: lookup}, true},
		{"ok/trust-domain", PKIMinterOptions{Client: c, Grant: lookup, TrustDomain: "example.org"}, true},
		{"fail/no-client", PKIMinterOptions{Grant: lookup}, false},
		{"fail/no-grant-lookup", PKIMinterOptions{Client: c}, false},
		{"fail/trust-domain-with-scheme", PKIMinterOptions{Client: c, Grant: lookup, TrustDomain: "spiffe://example.org"}, false},
		{"fail/negative-skew", PKIMinterOptions{Client: c, Grant: lookup, ClockSkew: -time.Second}, false},
	} {
		_, err := NewPKIMinter(tc.o)
		if (err == nil) != tc.ok {
			t.Errorf("%s: NewPKIMinter() = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

var pkiMountCases = []struct {
	name  string
	path  string
	mount string
	ok    bool
}{
	{"ok/plain", "pki/issue/workloads", "pki", true},
	{"ok/nested-mount", "secrets/pki/issue/web", "secrets/pki", true},
	{"ok/issuer-ref", "pki_int/issuer/default/issue/web", "pki_int", true},
	{"ok/mount-named-issuer", "issuer/issue/web", "issuer", true},
	{"fail/sign", "pki/sign/web", "", false},
	{"fail/no-role", "pki/issue", "", false},
	{"fail/no-mount", "issue/web", "", false},
	{"fail/leading-slash", "/pki/issue/web", "", false},
	{"fail/dot-dot", "pki/../sys/issue/web", "", false},
	{"fail/empty", "", "", false},
}

func TestPKIMount(t *testing.T) {
	t.Parallel()
	for _, tc := range pkiMountCases {
		mount, ok := PKIMount(tc.path)
		if mount != tc.mount || ok != tc.ok {
			t.Errorf("%s: PKIMount(%q) = %q, %v, want %q, %v", tc.name, tc.path, mount, ok, tc.mount, tc.ok)
		}
	}
}

func FuzzPKIMount(f *testing.F) {
	for _, tc := range pkiMountCases {
		f.Add(tc.path)
	}
	f.Fuzz(func(t *testing.T, path string) {
		mount, ok := PKIMount(path)
		if !ok {
			if mount != "" {
				t.Fatalf("PKIMount(%q) = %q, false: want no mount", path, mount)
			}
			return
		}
		if mount == "" || !strings.HasPrefix(path, mount+"/") || !validName(mount) {
			t.Fatalf("PKIMount(%q) = %q: not a clean prefix of the path", path, mount)
		}
		if !strings.Contains(path[len(mount):], "/issue/") {
			t.Fatalf("PKIMount(%q) = %q: the rest is not an issue path", path, mount)
		}
	})
}

// TestPKIMinterCleanupFailureNamesCertificate: a certificate Vault issued
// that the minter refuses (here: no URI SAN) is revoked; when that
// revocation fails too, the certificate stays valid, and the error must
// name it (serial, mount) as a *broker.UnrevokedError so that the deny
// event records it and trace finds it by its serial. (The serial was only
// in the internal error text, which reaches the server log alone.)
func TestPKIMinterCleanupFailureNamesCertificate(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	f := newFakeVault(t, map[string]http.HandlerFunc{
		pkiIssue:  issueReply(ca.leaf(t, pkiSerial, "", t0.Add(15*time.Minute)), ca.pem, pkiSerial),
		pkiRevoke: replyRaw(500, `{"errors":["storage unavailable"]}`),
	})
	m, err := NewPKIMinter(PKIMinterOptions{
		Client: f.client(t), Now: func() time.Time { return t0 },
		Grant: func(string) (*policies.Grant, bool) { return nil, false },
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Mint(context.Background(), pkiReq(nil))
	var ue *broker.UnrevokedError
	if !errors.As(err, &ue) {
		t.Fatalf("Mint() with the clean-up failing = %v (%T), want a *broker.UnrevokedError", err, err)
	}
	if want := (broker.CredentialRefs{Serial: pkiSerial, Mount: "pki"}); ue.Refs != want {
		t.Errorf("UnrevokedError.Refs = %+v, want %+v", ue.Refs, want)
	}
	if got := shapeOf(err); got != (errShape{unavailable, ReasonConfig}) {
		t.Errorf("Mint() error shape = %+v, want the refusal's own (config)", got)
	}
}
