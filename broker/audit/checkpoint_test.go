package audit_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/audit"
)

func TestCheckpointSigningInput(t *testing.T) {
	got := string(audit.CheckpointSigningInput("chn_x", 42, "ab01"))
	want := "keytrail-checkpoint-v1\nchn_x\n42\nab01"
	if got != want {
		t.Fatalf("CheckpointSigningInput() = %q, want %q", got, want)
	}
}

func TestNewEd25519Signer(t *testing.T) {
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalPKCS8PrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	ecPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER})
	privPEM := readTestdata(t, "checkpoint.key")

	tests := []struct {
		name    string
		pem     []byte
		wantErr string
	}{
		{name: "ok/openssl-genpkey-ed25519", pem: privPEM},
		{name: "fail/not-pem", pem: []byte("not a key"), wantErr: "no PEM block"},
		{name: "fail/public-key", pem: readTestdata(t, "checkpoint.pub"), wantErr: `"PUBLIC KEY"`},
		{name: "fail/ecdsa-key", pem: ecPEM, wantErr: "not an Ed25519 key"},
		{name: "fail/garbage-der", pem: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}), wantErr: "not a valid PKCS#8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := audit.NewEd25519Signer(tt.pem)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("NewEd25519Signer() = %v, want error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewEd25519Signer() = %v", err)
			}
			// The public key file openssl derived has the same key id.
			id, pub, err := audit.LoadEd25519PublicKey(readTestdata(t, "checkpoint.pub"))
			if err != nil {
				t.Fatalf("LoadEd25519PublicKey() = %v", err)
			}
			if id != s.KeyID() || !pub.Equal(s.PublicKey()) {
				t.Fatalf("LoadEd25519PublicKey() = %s, want %s", id, s.KeyID())
			}
			if !strings.HasPrefix(id, "ed25519:") || len(id) != len("ed25519:")+16 {
				t.Errorf("key id = %q, want ed25519: and 16 hex digits", id)
			}
			if strings.Contains(s.String(), "PRIVATE") || !strings.Contains(s.String(), id) {
				t.Errorf("String() = %q, want the key id only", s.String())
			}
		})
	}
}

func TestLoadEd25519PublicKey(t *testing.T) {
	tests := []struct {
		name    string
		pem     []byte
		wantErr string
	}{
		{name: "ok/openssl-pkey-pubout", pem: readTestdata(t, "other.pub")},
		{name: "fail/private-key", pem: readTestdata(t, "other.key"), wantErr: `want "PUBLIC KEY"`},
		{name: "fail/empty", pem: nil, wantErr: "no PEM block"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := audit.LoadEd25519PublicKey(tt.pem)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("LoadEd25519PublicKey() = %v, want error %q", err, tt.wantErr)
			}
		})
	}
}

func TestChainCheckpoint(t *testing.T) {
	s := testSigner(t, "checkpoint.key")
	c := audit.NewChain("chn_cp")
	line, err := c.Seal(&audit.Event{Type: audit.TypeStart}, goldenStart)
	if err != nil {
		t.Fatal(err)
	}
	// The clock stepped back: the checkpoint signs the time Seal gives it,
	// the last line's.
	at := goldenStart.Add(-time.Second)
	ev, err := c.Checkpoint(context.Background(), s, "req_cp1", at)
	if err != nil {
		t.Fatalf("Checkpoint() = %v", err)
	}
	sig, _ := base64.StdEncoding.DecodeString(ev.Checkpoint.Signature)
	want := audit.Checkpoint{Version: 2, HeadSeq: 1, HeadHash: audit.HashLine(line), KeyID: s.KeyID(), Alg: audit.AlgEd25519, Signature: ev.Checkpoint.Signature}
	if d := cmp.Diff(want, *ev.Checkpoint); d != "" {
		t.Errorf("Checkpoint() (-want +got):\n%s", d)
	}
	ts := goldenStart.Format(audit.TimeFormat)
	if ev.Time != ts || ev.RequestID != "req_cp1" {
		t.Errorf("Checkpoint() time, request_id = %q, %q; want %q, req_cp1", ev.Time, ev.RequestID, ts)
	}
	if !ed25519.Verify(s.PublicKey(), audit.CheckpointSigningInputV2("chn_cp", 1, audit.HashLine(line), ts, "req_cp1"), sig) {
		t.Errorf("Checkpoint() signature does not verify over CheckpointSigningInputV2")
	}
	// Sealed at another time than it signed, or after another line, it
	// is refused.
	if _, err := c.Clone().Seal(ev, goldenStart.Add(time.Second)); err == nil {
		t.Errorf("Seal(checkpoint, another time) = nil error, want one")
	}
	moved := c.Clone()
	if _, err := moved.Seal(&audit.Event{Type: audit.TypeUse}, goldenStart); err != nil {
		t.Fatal(err)
	}
	if _, err := moved.Seal(ev, at); err == nil {
		t.Errorf("Seal(checkpoint after another line) = nil error, want one")
	}
	cpLine, err := c.Seal(ev, at)
	if err != nil {
		t.Fatalf("Seal(checkpoint) = %v", err)
	}
	sealed, err := audit.ParseLine(cpLine)
	if err != nil {
		t.Fatal(err)
	}
	if msg, err := audit.CheckpointMessage(sealed); err != nil || !ed25519.Verify(s.PublicKey(), msg, sig) {
		t.Errorf("CheckpointMessage(sealed line) = %v; the signature does not verify over it", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Checkpoint(ctx, s, "", goldenStart); err == nil {
		t.Errorf("Checkpoint(cancelled ctx) = nil error, want one")
	}
	if _, err := c.Checkpoint(context.Background(), nil, "", goldenStart); err == nil {
		t.Errorf("Checkpoint(nil signer) = nil error, want one")
	}
}

func TestCheckpointSigningInputV2(t *testing.T) {
	got := string(audit.CheckpointSigningInputV2("chn_x", 42, "ab01", "2025-01-02T03:04:05.000000000Z", "req_1\nx"))
	want := "keytrail-checkpoint-v2\nchn_x\n42\nab01\n2025-01-02T03:04:05.000000000Z\nreq_1\nx"
	if got != want {
		t.Fatalf("CheckpointSigningInputV2() = %q, want %q", got, want)
	}
}
