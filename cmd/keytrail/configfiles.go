package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strings"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/policies"
)

// The readers of the files the server configuration names. keytrail server
// and keytrail config check call the same one for each file, so the check
// accepts exactly what the server does. Every error names the file; the
// caller adds the field. Each file is read as the config file is
// (policies.ReadFile): a regular file, symlinks followed, of at most
// policies.MaxFileSize bytes, so a mistaken path (a FIFO, /dev/zero, a
// directory) is refused, naming it and what it is, instead of blocking the
// start, a certificate reload or config check forever, or being read until
// memory runs out.

// loadCheckpointKey reads audit.checkpoint_key_file: an Ed25519 PKCS#8 PEM
// private key.
func loadCheckpointKey(path string) (*audit.Ed25519Signer, error) {
	b, err := policies.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s, err := audit.NewEd25519Signer(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %s", path, strings.TrimPrefix(err.Error(), "audit: checkpoint key: "))
	}
	return s, nil
}

// keyPairError is a problem with the TLS key pair, named by the field of
// the file it is in.
type keyPairError struct {
	field, path, msg string
}

func (e *keyPairError) Error() string { return e.field + ": " + e.path + ": " + e.msg }

// loadKeyPair reads tls.cert_file and tls.key_file, as tls.LoadX509KeyPair
// does (the certificate chain, the private key, and that they match); an
// error is a *keyPairError naming the field of the file at fault.
func loadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := policies.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, &keyPairError{"tls.cert_file", certFile, unwrapPath(certFile, err)}
	}
	keyPEM, err := policies.ReadFile(keyFile)
	if err != nil {
		return tls.Certificate{}, &keyPairError{"tls.key_file", keyFile, unwrapPath(keyFile, err)}
	}
	// Find which file is at fault before tls.X509KeyPair, whose errors
	// say "certificate input" or "key input" at best.
	if !hasPEMBlock(certPEM, func(t string) bool { return t == "CERTIFICATE" }) {
		return tls.Certificate{}, &keyPairError{"tls.cert_file", certFile, "no PEM certificate"}
	}
	// Only the leaf (the first certificate) is parsed, as tls.X509KeyPair
	// does: the rest of the chain is sent as is, and an intermediate Go
	// cannot parse (e.g. a negative serial) is the relying party's to judge.
	for rest := certPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return tls.Certificate{}, &keyPairError{"tls.cert_file", certFile, err.Error()}
		}
		break
	}
	if !hasPEMBlock(keyPEM, func(t string) bool { return t == "PRIVATE KEY" || strings.HasSuffix(t, " PRIVATE KEY") }) {
		return tls.Certificate{}, &keyPairError{"tls.key_file", keyFile, "no PEM private key"}
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// The certificate parsed: the key does not, or does not match.
		msg := strings.TrimPrefix(err.Error(), "tls: ")
		if strings.Contains(msg, "does not match") {
			msg = "private key does not match the certificate of tls.cert_file " + certFile
		}
		return tls.Certificate{}, &keyPairError{"tls.key_file", keyFile, msg}
	}
	return cert, nil
}

// hasPEMBlock reports whether data holds a PEM block whose type is one
// want accepts.
func hasPEMBlock(data []byte, want func(string) bool) bool {
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			return false
		}
		if want(b.Type) {
			return true
		}
	}
}

// unwrapPath is err, an error reading path, without the "open PATH: " of
// an *os.PathError or the "PATH: " of policies.ReadFile ("PATH: is a named
// pipe, not a regular file") when the caller names the path already.
func unwrapPath(path string, err error) string {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err.Error()
	}
	return strings.TrimPrefix(err.Error(), path+": ")
}

// defaultCheckpointKey is the checkpoint key the server uses (and on
// first start creates) when none is configured.
func defaultCheckpointKey(auditFile string) string { return auditFile + ".checkpoint.key" }
