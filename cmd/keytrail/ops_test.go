package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	vaultapi "github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/adapters/auditfile"
	vaultad "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/authn/authntest"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/jwks"
	"github.com/keytrail/keytrail/e2e/harness"
	"github.com/keytrail/keytrail/policies"
)

// writeCert writes a self-signed certificate for cn and its key.
func writeCert(t *testing.T, dir, cn string) (certFile, keyFile string, der []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, DNSNames: []string{cn}}
	der, err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile+".tmp", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile+".tmp", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	os.Rename(certFile+".tmp", certFile)
	os.Rename(keyFile+".tmp", keyFile)
	return certFile, keyFile, der
}

func TestCertReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, first := writeCert(t, dir, "one.example")
	var logs bytes.Buffer
	r, err := newCertReloader(certFile, keyFile, 0, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := r.getCertificate(&tls.ClientHelloInfo{})
	if !bytes.Equal(got.Certificate[0], first) {
		t.Fatalf("first certificate not served")
	}
	_, _, second := writeCert(t, dir, "two.example")
	// The stamp includes mtime with nanoseconds; make sure it differs.
	later := time.Now().Add(time.Second)
	os.Chtimes(certFile, later, later)
	got, _ = r.getCertificate(&tls.ClientHelloInfo{})
	if !bytes.Equal(got.Certificate[0], second) {
		t.Errorf("rotated certificate not picked up")
	}
	// A broken pair keeps the last good certificate.
	os.WriteFile(keyFile, []byte("garbage"), 0o600)
	got, _ = r.getCertificate(&tls.ClientHelloInfo{})
	if !bytes.Equal(got.Certificate[0], second) || !bytes.Contains(logs.Bytes(), []byte("keeping the old one")) {
		t.Errorf("broken key pair: served a different certificate or logged nothing:\n%s", logs.String())
	}
}

func TestServerTLSClientCA(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, _ := writeCert(t, dir, "broker.example")
	tc, err := serverTLS(&TLSConfig{CertFile: certFile, KeyFile: keyFile, ClientCAFile: certFile}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if tc.ClientAuth != tls.RequireAndVerifyClientCert || tc.ClientCAs == nil || tc.MinVersion != tls.VersionTLS12 {
		t.Errorf("tls config = auth %v, CAs %v, min %x; want client certificates required, TLS 1.2+", tc.ClientAuth, tc.ClientCAs != nil, tc.MinVersion)
	}
	if _, err := serverTLS(&TLSConfig{CertFile: certFile, KeyFile: keyFile, ClientCAFile: keyFile}, slog.New(slog.DiscardHandler)); err == nil {
		t.Errorf("a client CA file without certificates was accepted")
	}
}

// TestServerTLSWarnsAtStartUp: the server started with an expired (or not
// yet valid) serving certificate, or a key file others can read, without
// a word; keytrail config check alone said so. It now logs one WARN for
// each, naming the field and the file, never the key; a good pair logs
// nothing.
func TestServerTLSWarnsAtStartUp(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	goodCert, goodKey := writeKeyPair(t, dir, "good", now.Add(-time.Hour), now.Add(90*24*time.Hour))
	expCert, expKey := writeKeyPair(t, dir, "expired", now.Add(-48*time.Hour), now.Add(-time.Hour))
	futCert, futKey := writeKeyPair(t, dir, "future", now.Add(time.Hour), now.Add(48*time.Hour))
	looseKey := filepath.Join(dir, "loose.key")
	if err := os.WriteFile(looseKey, []byte(mustReadFile(t, goodKey)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(looseKey, 0o644); err != nil { // whatever the umask
		t.Fatal(err)
	}
	type warning struct{ Level, Msg, Field, File, Mode string }
	tests := []struct {
		name      string
		cert, key string
		want      []warning
	}{
		{"ok/good-pair", goodCert, goodKey, nil},
		{"warn/expired", expCert, expKey, []warning{{"WARN", "tls certificate has expired: clients will refuse it until a renewed one is written", "tls.cert_file", expCert, ""}}},
		{"warn/not-yet-valid", futCert, futKey, []warning{{"WARN", "tls certificate is not valid yet: clients will refuse it until then", "tls.cert_file", futCert, ""}}},
		{"warn/loose-key", goodCert, looseKey, []warning{{"WARN", "tls key file can be read or changed by others than its owner; chmod 600 it", "tls.key_file", looseKey, "0644"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			if _, err := serverTLS(&TLSConfig{CertFile: tt.cert, KeyFile: tt.key}, slog.New(slog.NewJSONHandler(&logs, nil))); err != nil {
				t.Fatalf("serverTLS = %v, want the pair served", err)
			}
			var got []warning
			for _, line := range bytes.Split(bytes.TrimSpace(logs.Bytes()), []byte("\n")) {
				if len(line) == 0 {
					continue
				}
				var w warning
				if err := json.Unmarshal(line, &w); err != nil {
					t.Fatalf("log line %q: %v", line, err)
				}
				got = append(got, w)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("serverTLS logged (-want +got):\n%s", diff)
			}
			if key := mustReadFile(t, tt.key); strings.Contains(logs.String(), strings.Split(key, "\n")[1]) {
				t.Errorf("serverTLS logged the private key:\n%s", logs.String())
			}
		})
	}
}

// TestServePprof: pprof_listen serves the profiling index and stops.
func TestServePprof(t *testing.T) {
	addr, stop, err := servePprof("127.0.0.1:0", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr + "/debug/pprof/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || len(body) == 0 {
		t.Fatalf("GET /debug/pprof/cmdline = %d %q", resp.StatusCode, body)
	}
	stop()
	if resp, err := http.Get("http://" + addr + "/debug/pprof/"); err == nil {
		resp.Body.Close()
		t.Errorf("pprof still answers after stop: %s", resp.Status)
	}
}

// timedFileSink is a timedSink over an audit file in t's temp dir opened
// with o, the file sink, and the registry the timedSink's metrics are in.
func timedFileSink(t *testing.T, o auditfile.Options) (broker.AuditSink, *auditfile.Sink, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := newOpsMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	o.Path = filepath.Join(t.TempDir(), "audit.jsonl")
	fs, err := auditfile.Open(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fs.Close() })
	return timedSink{AuditSink: fs, m: m}, fs, reg
}

// writesObserved is how many audit writes the histogram in reg observed.
func writesObserved(t *testing.T, reg *prometheus.Registry) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "keytrail_audit_write_duration_seconds" {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	return 0
}

// TestTimedSinkDeferred: the metrics wrapper keeps the file sink's deferred
// appends (one fsync shared with the next event) and still measures them.
func TestTimedSinkDeferred(t *testing.T) {
	s, fs, reg := timedFileSink(t, auditfile.Options{DeferFor: time.Hour})
	d, ok := s.(broker.DeferredAuditSink)
	if !ok {
		t.Fatal("timedSink does not offer deferred appends")
	}
	done := make(chan error, 1)
	d.AppendDeferred(&audit.Event{Type: audit.TypeUseResult}, func(err error) { done <- err })
	if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("deferred outcome = %v", err)
	}
	if st := fs.Stats(); st.Batches != 1 || st.Events != 2 {
		t.Errorf("file sink stats = %+v, want both events in one batch", st)
	}
	if n := writesObserved(t, reg); n != 2 {
		t.Errorf("audit write observations = %d, want 2 (the deferred one included)", n)
	}
}

// TestTimedSinkBatch: the metrics wrapper keeps the file sink's batch
// append, so that the parts of a revocation stay all or nothing behind it
// (without it the Service wrote them one by one), and measures each event.
func TestTimedSinkBatch(t *testing.T) {
	s, fs, reg := timedFileSink(t, auditfile.Options{})
	b, ok := s.(broker.BatchAuditSink)
	if !ok {
		t.Fatal("timedSink does not offer batch appends")
	}
	evs := []*audit.Event{{Type: audit.TypeRevoke}, {Type: audit.TypeRevoke}, {Type: audit.TypeBlock}}
	if err := b.AppendBatch(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
	if st := fs.Stats(); st.Batches != 1 || st.Events != 3 {
		t.Errorf("file sink stats = %+v, want the 3 events in one batch", st)
	}
	if n := writesObserved(t, reg); n != 3 {
		t.Errorf("audit write observations = %d, want 3 (one per event)", n)
	}
}

// TestTimedSinkBounded: the metrics wrapper keeps the file sink's bounded
// append, so that Service.Audit (a proxied call's use event) waits at most
// AuditTimeout behind it, and measures it.
func TestTimedSinkBounded(t *testing.T) {
	s, fs, reg := timedFileSink(t, auditfile.Options{})
	b, ok := s.(broker.BoundedAuditSink)
	if !ok {
		t.Fatal("timedSink does not offer bounded appends")
	}
	if err := b.AppendWithin(&audit.Event{Type: audit.TypeUse}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if st := fs.Stats(); st.Events != 1 {
		t.Errorf("file sink stats = %+v, want the event written", st)
	}
	if n := writesObserved(t, reg); n != 1 {
		t.Errorf("audit write observations = %d, want 1", n)
	}
}

// TestSinkSeqGauges: the broker exports the audit chain's high-water mark
// (the seq of its last durable line and of its last checkpoint, and the
// chain id), so that monitoring keeps it outside the broker's disk: a log
// cut after a checkpoint is invisible in the files alone, but ends before
// the seq monitoring saw (keytrail audit verify --expect-seq).
func TestSinkSeqGauges(t *testing.T) {
	dir := t.TempDir()
	signer, _ := devCheckpointSigner(t, dir)
	path := filepath.Join(dir, "audit.jsonl")
	gauges := func(sink *auditfile.Sink) map[string]float64 {
		t.Helper()
		reg := prometheus.NewRegistry()
		m, err := newOpsMetrics(reg)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.registerSink(reg, sink); err != nil {
			t.Fatal(err)
		}
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]float64{}
		for _, mf := range mfs {
			for _, mt := range mf.GetMetric() {
				name := mf.GetName()
				for _, l := range mt.GetLabel() {
					name += "{" + l.GetName() + "=" + l.GetValue() + "}"
				}
				out[name] = mt.GetGauge().GetValue()
			}
		}
		return out
	}
	sink, err := auditfile.Open(auditfile.Options{Path: path, Signer: signer, CheckpointEvery: 3})
	if err != nil {
		t.Fatal(err)
	}
	for range 4 { // seq 1-3, checkpoint 4, seq 5
		if err := sink.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); err != nil {
			t.Fatal(err)
		}
	}
	got := gauges(sink)
	chain := "keytrail_audit_chain_info{chain=" + sink.ChainID() + "}"
	for name, want := range map[string]float64{"keytrail_audit_last_seq": 5, "keytrail_audit_last_checkpoint_seq": 4, chain: 1} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (exported: %v), want %v", name, v, ok, want)
		}
	}
	if err := sink.Close(); err != nil { // final checkpoint: seq 6
		t.Fatal(err)
	}
	// A restarted broker exports where its chain stands at once.
	sink, err = auditfile.Open(auditfile.Options{Path: path, Signer: signer, CheckpointEvery: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	got = gauges(sink)
	if got["keytrail_audit_last_seq"] != 6 || got["keytrail_audit_last_checkpoint_seq"] != 6 {
		t.Errorf("after a restart: last_seq %v, last_checkpoint_seq %v; want 6 and 6", got["keytrail_audit_last_seq"], got["keytrail_audit_last_checkpoint_seq"])
	}
}

// reloadPolicyHead is the issuer and workload the reload tests share; the
// workload's grants replace {GRANTS}, the issuer's URL {ISS}.
const reloadPolicyHead = `version: 1
issuers:
  - name: test
    issuer: {ISS}
    jwks_url: {ISS}/jwks.json
    audiences: [keytrail]
    algorithms: [ES256]
workloads:
  - name: payments-api
    owner: team-payments
    match: {issuer: test, subject: system:serviceaccount:payments:api}
    grants: [{GRANTS}]
`

const reloadJWKSPolicy = reloadPolicyHead + `grants:
  - name: orders-jwt
    kind: jwt
    ttl: 5m
    jwt: {audience: orders-api, transit_key: keytrail-signing}
{EXTRA}`

const reloadJWKSEd25519Grant = `  - name: billing-jwt
    kind: jwt
    ttl: 5m
    jwt: {audience: billing-api, transit_key: keytrail-ed25519}
`

// TestReloadedJWTGrantKeyIsInJWKS: a policy reload (SIGHUP or the file
// watcher) that adds a jwt grant signed with another transit key must put
// that key in /.well-known/jwks.json, or no verifier can check the new
// grant's JWTs until the broker restarts. Real Vault (harness.StartVault).
func TestReloadedJWTGrantKeyIsInJWKS(t *testing.T) {
	vp := harness.StartVault(t) // builds Vault if needed; fails, never skips
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()

	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		t.Fatal(err)
	}
	issSrv := httptest.NewServer(iss.Handler())
	defer issSrv.Close()
	iss.URL = issSrv.URL

	polFile := filepath.Join(dir, "policy.yaml")
	writePol := func(grants, extra string) {
		p := strings.NewReplacer("{ISS}", issSrv.URL, "{GRANTS}", grants, "{EXTRA}", extra).Replace(reloadJWKSPolicy)
		if err := os.WriteFile(polFile, []byte(p), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writePol("orders-jwt", "")

	readyc, errc := goServer(t, ctx, dir, polFile, vp.Addr, vp.RootToken)
	base := "http://" + awaitServing(t, readyc, errc)
	defer func() { cancel(); <-errc }()

	exchange := func(grant string) (int, map[string]any) {
		tok, err := iss.Token("system:serviceaccount:payments:api", "keytrail", time.Now(), 10*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		form := url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:token-exchange"}, "subject_token": {tok},
			"subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"}, "audience": {grant}}
		resp, err := http.PostForm(base+"/v1/token", form)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
			t.Fatalf("/v1/token %s: status %d, body not JSON: %v", grant, resp.StatusCode, err)
		}
		return resp.StatusCode, m
	}
	kidOf := func(jwt string) string {
		h, err := base64.RawURLEncoding.DecodeString(strings.Split(jwt, ".")[0])
		if err != nil {
			t.Fatal(err)
		}
		var hdr struct{ Kid string }
		if err := json.Unmarshal(h, &hdr); err != nil || hdr.Kid == "" {
			t.Fatalf("JWT header %s: no kid (%v)", h, err)
		}
		return hdr.Kid
	}
	jwksKids := func() []string {
		resp, err := http.Get(base + "/.well-known/jwks.json")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var set struct{ Keys []struct{ Kid string } }
		if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
			t.Fatalf("jwks.json: status %d: %v", resp.StatusCode, err)
		}
		var kids []string
		for _, k := range set.Keys {
			kids = append(kids, k.Kid)
		}
		return kids
	}
	st, m := exchange("orders-jwt")
	if st != 200 {
		t.Fatalf("orders-jwt exchange = %d %v", st, m)
	}
	ordersKid := kidOf(m["access_token"].(string))

	// Add a jwt grant signed with another transit key; the file watcher
	// reloads the policy (same path as SIGHUP).
	writePol("orders-jwt, billing-jwt", reloadJWKSEd25519Grant)
	deadline := time.After(20 * time.Second)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		var st int
		if st, m = exchange("billing-jwt"); st == 200 {
			break
		}
		select {
		case <-deadline:
			t.Fatalf("billing-jwt never issued after the reload: %d %v", st, m)
		case <-tick.C:
		}
	}
	kids := jwksKids()
	for _, kid := range []string{ordersKid, kidOf(m["access_token"].(string))} {
		if !slices.Contains(kids, kid) {
			t.Errorf("a JWT issued after the reload is signed with kid %q, but /.well-known/jwks.json serves only %v: verifiers cannot check it", kid, kids)
		}
	}
}

// TestInitPolicyKeyNames: the JWKS key list of the policy served names the
// transit keys its jwt grants sign with, and the checkpoint transit key when
// one is configured (how the list changes on a reload: broker/jwks).
func TestInitPolicyKeyNames(t *testing.T) {
	dir := t.TempDir()
	vc, err := vaultapi.NewClient(vaultapi.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	p := strings.NewReplacer("{ISS}", "https://issuer.example", "{GRANTS}", "orders-jwt, billing-jwt", "{EXTRA}", reloadJWKSEd25519Grant).Replace(reloadJWKSPolicy)
	pol, err := policies.Load(writeFile(t, dir, "policy.yaml", p))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, checkpoint string
		want             []string
	}{
		{"ok/jwt-grants", "", []string{"keytrail-ed25519", "keytrail-signing"}},
		{"ok/with-checkpoint-transit-key", "checkpoints", []string{"checkpoints", "keytrail-ed25519", "keytrail-signing"}},
	} {
		rt := &brokerRuntime{cfg: &Config{}, vault: vc}
		rt.cfg.Audit.CheckpointTransitKey = tc.checkpoint
		if err := rt.initPolicy(pol, nil); err != nil {
			t.Fatalf("%s: initPolicy: %v", tc.name, err)
		}
		if diff := cmp.Diff(tc.want, rt.keys.Names()); diff != "" {
			t.Errorf("%s: key names (-want +got):\n%s", tc.name, diff)
		}
	}
}

// TestReloadRetiresDroppedTransitKeys: a reload that drops the last jwt
// grant signing with a transit key keeps that key in /.well-known/jwks.json
// while JWTs it signed may still be live (the longest ttl of the grants that
// used it, plus jwks.RetireLeeway for verifiers' clock skew), then drops it:
// a later reload does not extend that, and the one after it stops reading
// the key. Real Vault (harness.StartVault).
func TestReloadRetiresDroppedTransitKeys(t *testing.T) {
	vp := harness.StartVault(t) // builds Vault if needed; fails, never skips
	dir := t.TempDir()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	rt := &brokerRuntime{cfg: &Config{}, vault: vp.Client, log: slog.New(slog.DiscardHandler), now: func() time.Time { return now }}
	load := func(grants, extra string) *policies.Policy {
		t.Helper()
		p := strings.NewReplacer("{ISS}", "https://issuer.example", "{GRANTS}", grants, "{EXTRA}", extra).Replace(reloadJWKSPolicy)
		pol, err := policies.Load(writeFile(t, dir, "policy.yaml", p))
		if err != nil {
			t.Fatal(err)
		}
		return pol
	}
	reload := func(pol *policies.Policy) {
		t.Helper()
		if rt.keys == nil {
			if err := rt.initPolicy(pol, nil); err != nil {
				t.Fatal(err)
			}
			return
		}
		if err := rt.keys.Update(jwks.SigningKeys(pol), nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	kids := func() []string {
		t.Helper()
		keys, err := rt.keys.PublicKeys(context.Background())
		if err != nil {
			t.Fatalf("PublicKeys() = %v", err)
		}
		var out []string
		for _, k := range keys {
			out = append(out, k.KID)
		}
		return out
	}
	const billingTTL = 5 * time.Minute // reloadJWKSEd25519Grant's ttl
	both := []string{harness.VaultEd25519Key + ":1", harness.VaultSigningKey + ":1"}
	orders := []string{harness.VaultSigningKey + ":1"}

	reload(load("orders-jwt, billing-jwt", reloadJWKSEd25519Grant))
	reload(load("orders-jwt", "")) // billing-jwt, and with it its key, dropped
	steps := []struct {
		name    string
		at      time.Duration // after the reload that dropped billing-jwt
		reload  bool
		want    []string
		wantKey []string // keyNames after the step
	}{
		{"ok/kept-while-its-jwts-live", billingTTL, false, both, nil},
		{"ok/a-later-reload-does-not-extend", billingTTL + jwks.RetireLeeway - time.Second, true, both, nil},
		{"ok/dropped-once-its-jwts-expired", billingTTL + jwks.RetireLeeway, false, orders, nil},
		{"ok/no-longer-read-after-the-next-reload", billingTTL + jwks.RetireLeeway + time.Minute, true, orders, []string{harness.VaultSigningKey}},
	}
	start := now
	for _, s := range steps {
		now = start.Add(s.at)
		if s.reload {
			reload(load("orders-jwt", ""))
		}
		if diff := cmp.Diff(s.want, kids()); diff != "" {
			t.Errorf("%s: JWKS kids %v after the drop (-want +got):\n%s", s.name, s.at, diff)
		}
		if got := rt.keys.Names(); s.wantKey != nil && !slices.Equal(got, s.wantKey) {
			t.Errorf("%s: key names %q, want %q", s.name, got, s.wantKey)
		}
	}
}

// TestPolicyStampIgnoresFilesTheLoaderDoesNotRead: the policy watcher
// reloads (and writes a policy_load event) when the stamp of the policy
// directory changes. An editor's swap and probe files, hidden files and
// other extensions are never read by the loader: they must not change it.
// A miscased policy file does (the loader reports it as a problem).
func TestPolicyStampIgnoresFilesTheLoaderDoesNotRead(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("a.yaml", "version: 1\n")
	before := policyStamp(dir)
	for _, name := range []string{".a.yaml.swp", "4913", "a.yaml~", "README.md", ".hidden.yaml"} {
		write(name, "x")
		if got := policyStamp(dir); got != before {
			t.Errorf("writing %s changed the stamp: the watcher would reload for a file the loader never reads", name)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	if got := policyStamp(dir); got != before {
		t.Errorf("a directory changed the stamp")
	}
	// A directory named *.yaml is refused by the loader ("is a
	// directory, not a regular file"): the watcher must reload.
	if err := os.Mkdir(filepath.Join(dir, "sub.yaml"), 0o700); err != nil {
		t.Fatal(err)
	}
	refused := policyStamp(dir)
	if refused == before {
		t.Errorf("a directory named sub.yaml left the stamp unchanged: the loader reports it, the watcher must reload")
	}
	write("B.YAML", "x")
	miscased := policyStamp(dir)
	if miscased == refused {
		t.Errorf("a miscased policy file left the stamp unchanged: the loader reports it, the watcher must reload")
	}
	write("a.yaml", "version: 1\n# changed\n")
	if policyStamp(dir) == miscased {
		t.Errorf("changing a.yaml left the stamp unchanged")
	}
}

// TestAuditBucketsBetweenTenthAndHalfSecond: the audit histograms tell a
// 0.2s write from a 0.4s one (a disk slowing down), and a 2s one from a
// stall of more than 5s (a checkpoint's signing waits up to 5s).
func TestAuditBucketsBetweenTenthAndHalfSecond(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newOpsMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []prometheus.Histogram{m.auditSeconds, m.auditSync} {
		for _, s := range []float64{0.2, 0.4, 2, 7} {
			h.Observe(s)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, mf := range mfs {
		name := mf.GetName()
		if name != "keytrail_audit_write_duration_seconds" && name != "keytrail_audit_sync_duration_seconds" {
			continue
		}
		seen++
		// The cumulative counts must take every value from 1 to 3: each
		// observation but the last is told from the next one.
		counts := map[uint64]bool{}
		var bounds []float64
		for _, b := range mf.GetMetric()[0].GetHistogram().GetBucket() {
			counts[b.GetCumulativeCount()] = true
			bounds = append(bounds, b.GetUpperBound())
		}
		for _, n := range []uint64{1, 2, 3} {
			if !counts[n] {
				t.Errorf("%s: no bucket holds exactly %d of the observations 0.2, 0.4, 2, 7 s (buckets %v)", name, n, bounds)
			}
		}
	}
	if seen != 2 {
		t.Fatalf("gathered %d audit histograms, want 2", seen)
	}
}

// TestLoginRevokeFailuresMetric: the failed revocations of replaced Vault
// login tokens (LoginStatus.ReplacedRevokeFailures) are exported as
// keytrail_vault_replaced_token_revoke_failures_total, read at each scrape.
func TestLoginRevokeFailuresMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	var st vaultad.LoginStatus
	if err := registerLogin(reg, func() vaultad.LoginStatus { return st }); err != nil {
		t.Fatal(err)
	}
	value := func() float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "keytrail_vault_replaced_token_revoke_failures_total" {
				return mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
		t.Fatal("keytrail_vault_replaced_token_revoke_failures_total is not registered")
		return 0
	}
	if v := value(); v != 0 {
		t.Errorf("before any failure: %v, want 0", v)
	}
	st.ReplacedRevokeFailures = 2
	if v := value(); v != 2 {
		t.Errorf("after two failures: %v, want 2", v)
	}
}

// TestLoginRefusedRevokeFailuresMetric: the failed revocations of a token a
// login got and the broker refused (a use limit) were only logged
// (revokeRefused), with no counter unlike a replaced token's. They are
// exported as keytrail_vault_refused_login_token_revoke_failures_total
// (LoginStatus.RefusedRevokeFailures), read at each scrape, apart from the
// replaced tokens' counter.
func TestLoginRefusedRevokeFailuresMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	var st vaultad.LoginStatus
	if err := registerLogin(reg, func() vaultad.LoginStatus { return st }); err != nil {
		t.Fatal(err)
	}
	values := func() map[string]float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			got[mf.GetName()] = mf.GetMetric()[0].GetCounter().GetValue()
		}
		return got
	}
	const name = "keytrail_vault_refused_login_token_revoke_failures_total"
	if v, ok := values()[name]; !ok || v != 0 {
		t.Fatalf("before any failure: %s = %v (registered %v), want 0", name, v, ok)
	}
	st.RefusedRevokeFailures = 3
	got := values()
	if v := got[name]; v != 3 {
		t.Errorf("after three failures: %s = %v, want 3", name, v)
	}
	if v := got["keytrail_vault_replaced_token_revoke_failures_total"]; v != 0 {
		t.Errorf("keytrail_vault_replaced_token_revoke_failures_total = %v after refused-token failures only, want 0", v)
	}
}

// TestTimedSinkQueuing: the metrics wrapper keeps the file sink's queuing
// append, so that an exchange queues its issue event without a goroutine
// behind it too, and measures it from the call to the outcome; over a sink
// without one it queues nothing (the exchange then calls Append).
func TestTimedSinkQueuing(t *testing.T) {
	s, fs, reg := timedFileSink(t, auditfile.Options{DeferFor: time.Hour})
	q, ok := s.(broker.QueuingAuditSink)
	if !ok {
		t.Fatal("timedSink does not offer queuing appends")
	}
	done := make(chan error, 1)
	if !q.Enqueue(&audit.Event{Type: audit.TypeIssue}, func(err error) { done <- err }) {
		t.Fatal("Enqueue() = false on an open file sink")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("outcome = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no outcome within 10s")
	}
	if st := fs.Stats(); st.Events != 1 {
		t.Errorf("file sink stats = %+v, want the event written", st)
	}
	if n := writesObserved(t, reg); n != 1 {
		t.Errorf("audit write observations = %d, want 1", n)
	}
	plain := timedSink{AuditSink: &brokertest.Sink{}} // its metrics are not reached
	if plain.Enqueue(&audit.Event{Type: audit.TypeIssue}, func(error) { t.Error("done called for an event not queued") }) {
		t.Error("Enqueue() = true over a sink without a queue")
	}
}

// TestSinkTooLongLinesGauge: lines longer than any a broker writes that
// start-up read past while reading the audit file back to its last
// checkpoint (a corrupted or added line: the broker starts, logs an ERROR,
// and audit verify reports it) are exported, so that monitoring sees them
// without reading the log: keytrail_audit_start_too_long_lines.
func TestSinkTooLongLinesGauge(t *testing.T) {
	dir := t.TempDir()
	signer, _ := devCheckpointSigner(t, dir)
	path := filepath.Join(dir, "audit.jsonl")
	gauge := func(sink *auditfile.Sink) (float64, bool) {
		t.Helper()
		reg := prometheus.NewRegistry()
		m, err := newOpsMetrics(reg)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.registerSink(reg, sink); err != nil {
			t.Fatal(err)
		}
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "keytrail_audit_start_too_long_lines" && len(mf.GetMetric()) == 1 {
				return mf.GetMetric()[0].GetGauge().GetValue(), true
			}
		}
		return 0, false
	}
	sink, err := auditfile.Open(auditfile.Options{Path: path, Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	if err := sink.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); err != nil {
		t.Fatal(err)
	}
	if v, ok := gauge(sink); !ok || v != 0 {
		t.Errorf("keytrail_audit_start_too_long_lines of a new file = %v (exported: %v), want 0", v, ok)
	}
	if err := sink.Close(); err != nil { // final checkpoint: seq 2
		t.Fatal(err)
	}
	// Two over-long lines added after it, then a line of the chain.
	lines, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	last := bytes.Split(bytes.TrimSuffix(lines, []byte{'\n'}), []byte{'\n'})
	c, err := audit.ResumeChain(last[len(last)-1])
	if err != nil {
		t.Fatal(err)
	}
	next, err := c.Seal(&audit.Event{Type: audit.TypeUse}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	long := append(bytes.Repeat([]byte{'x'}, audit.MaxLineBytes+1), '\n')
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(append(append(append(long, long...), next...), '\n')); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	sink, err = auditfile.Open(auditfile.Options{Path: path, Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	if v, ok := gauge(sink); !ok || v != 2 {
		t.Errorf("keytrail_audit_start_too_long_lines after two over-long lines = %v (exported: %v), want 2", v, ok)
	}
}
