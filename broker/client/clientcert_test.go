package client

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// newCert is a certificate for 127.0.0.1 signed by parent (self-signed
// when parent is nil), usable as a CA, a server's and a client's.
func newCert(t *testing.T, parent *tls.Certificate) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "keytrail test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, BasicConstraintsValid: true, IsCA: true,
	}
	signer, signerKey := tmpl, any(key)
	if parent != nil {
		signer, signerKey = parent.Leaf, parent.PrivateKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// TestClientCertificateRefusalIsPermanent: a broker requiring mutual TLS
// (its tls.client_ca_file) answers a client without a certificate, or with
// one it does not trust, with a TLS alert ('remote error: tls: certificate
// required', 'unknown certificate authority'). That was a transport failure, retried until the caller gave
// up, though every try is refused the same way until the client's
// certificate or the broker's trust changes. It is permanent now
// (IsClientCertificateRefused); a client with a certificate the broker
// trusts gets through.
func TestClientCertificateRefusalIsPermanent(t *testing.T) {
	ca := newCert(t, nil)
	trusted := newCert(t, &ca)
	untrusted := newCert(t, nil)
	serverCert := newCert(t, nil)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Leaf)
	roots := x509.NewCertPool()
	roots.AddCert(serverCert.Leaf)
	server := func(maxVersion uint16) *httptest.Server {
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Request-Id", "req_mtls")
			w.WriteHeader(http.StatusForbidden)
		}))
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MaxVersion: maxVersion}
		srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshakes refused
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return srv
	}
	presenting := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: certs}}}
	}
	tls13, tls12 := server(0), server(tls.VersionTLS12)
	for _, c := range []struct {
		name string
		srv  *httptest.Server
		hc   *http.Client
		want string
	}{
		{"tls1.3-none", tls13, presenting(), "remote error: tls: certificate required"},
		{"tls1.3-untrusted", tls13, presenting(untrusted), "remote error: tls: unknown certificate authority"},
		{"tls1.2-untrusted", tls12, presenting(untrusted), "remote error: tls: unknown certificate authority"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := exchangeErr(t, c.srv.URL, c.hc)
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Exchange = %v, want %q", err, c.want)
			}
			if !IsClientCertificateRefused(err) || !IsPermanent(err) || IsTransient(err) || IsCertificateError(err) {
				t.Errorf("IsClientCertificateRefused, IsPermanent, IsTransient, IsCertificateError = %v, %v, %v, %v for %q; want true, true, false, false",
					IsClientCertificateRefused(err), IsPermanent(err), IsTransient(err), IsCertificateError(err), err)
			}
		})
	}
	err := exchangeErr(t, tls13.URL, presenting(trusted))
	var be *Error
	if !errors.As(err, &be) || be.Status != http.StatusForbidden || IsClientCertificateRefused(err) {
		t.Errorf("Exchange with a trusted client certificate = %v, want the broker's 403", err)
	}
	// Another alert stays as it was (transient).
	if IsClientCertificateRefused(&net.OpError{Op: "remote error", Err: errors.New("tls: internal error")}) {
		t.Error("IsClientCertificateRefused(internal error alert) = true")
	}
}
