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
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/adapters/auditfile"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
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

// TestTimedSinkDeferred: the metrics wrapper keeps the file sink's deferred
// appends (one fsync shared with the next event) and still measures them.
func TestTimedSinkDeferred(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newOpsMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	fs, err := auditfile.Open(auditfile.Options{Path: path, DeferFor: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	var s broker.AuditSink = timedSink{AuditSink: fs, m: m}
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
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, mf := range mfs {
		if mf.GetName() == "keytrail_audit_write_duration_seconds" {
			n = mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	if n != 2 {
		t.Errorf("audit write observations = %d, want 2 (the deferred one included)", n)
	}
}
