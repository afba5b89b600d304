package audit

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Checkpoint signature algorithms (Checkpoint.Alg).
const (
	AlgEd25519      = "Ed25519"
	AlgVaultTransit = "vault-transit"
)

// CheckpointDomain opens the signing input of a version 1 checkpoint, so
// that a checkpoint signature cannot be confused with a signature over
// anything else.
const CheckpointDomain = "keytrail-checkpoint-v1"

// CheckpointDomainV2 opens the signing input of a version 2 checkpoint.
const CheckpointDomainV2 = "keytrail-checkpoint-v2"

// CheckpointVersion is the checkpoint version Chain.Checkpoint writes
// (Checkpoint.Version).
const CheckpointVersion = 2

// CheckpointSigningInput returns the bytes a version 1 checkpoint signs:
//
//	keytrail-checkpoint-v1 LF <chain> LF <head seq, decimal> LF <head hash, hex>
//
// with no trailing newline. It is unambiguous because chain ids contain no
// whitespace (ValidChainID), seq is a decimal number and the hash is hex.
// It does not cover the checkpoint line's own time and request_id: version
// 2 (CheckpointSigningInputV2) does. Brokers before version 2 wrote version
// 1 checkpoints; Verify still checks them.
func CheckpointSigningInput(chain string, headSeq uint64, headHash string) []byte {
	return appendCheckpointHead(make([]byte, 0, len(CheckpointDomain)+len(chain)+len(headHash)+24), CheckpointDomain, chain, headSeq, headHash)
}

// appendCheckpointHead appends the part both versions sign:
// <domain> LF <chain> LF <head seq, decimal> LF <head hash>.
func appendCheckpointHead(b []byte, domain, chain string, headSeq uint64, headHash string) []byte {
	b = append(b, domain...)
	b = append(b, '\n')
	b = append(b, chain...)
	b = append(b, '\n')
	b = strconv.AppendUint(b, headSeq, 10)
	b = append(b, '\n')
	return append(b, headHash...)
}

// CheckpointSigningInputV2 returns the bytes a version 2 checkpoint signs:
// the head, as version 1 does, and the checkpoint line's own time and
// request_id, the only other fields of the line that are not implied by
// the head (seq is head seq + 1, prev the head hash, type "checkpoint"):
//
//	keytrail-checkpoint-v2 LF <chain> LF <head seq> LF <head hash> LF <time> LF <request_id>
//
// with no trailing newline. The time is in TimeFormat (no newline); the
// request id comes last, so that whatever it holds cannot be taken for
// another field.
func CheckpointSigningInputV2(chain string, headSeq uint64, headHash, time, requestID string) []byte {
	b := make([]byte, 0, len(CheckpointDomainV2)+len(chain)+len(headHash)+len(time)+len(requestID)+26)
	b = appendCheckpointHead(b, CheckpointDomainV2, chain, headSeq, headHash)
	b = append(b, '\n')
	b = append(b, time...)
	b = append(b, '\n')
	b = append(b, requestID...)
	return b
}

// CheckpointMessage returns what the checkpoint event ev signs, by its
// version: CheckpointSigningInput for version 1 (Checkpoint.Version 0, as
// brokers before version 2 wrote it), CheckpointSigningInputV2 for version
// 2. Another version, or an event that is not a checkpoint, is an error.
func CheckpointMessage(ev *Event) ([]byte, error) {
	if ev == nil || ev.Checkpoint == nil {
		return nil, errors.New("not a checkpoint event")
	}
	cp := ev.Checkpoint
	switch cp.Version {
	case 0:
		return CheckpointSigningInput(ev.Chain, cp.HeadSeq, cp.HeadHash), nil
	case 2:
		return CheckpointSigningInputV2(ev.Chain, cp.HeadSeq, cp.HeadHash, ev.Time, ev.RequestID), nil
	}
	return nil, fmt.Errorf("checkpoint version %d is not one this verifier knows (2, or none for 1)", cp.Version)
}

// Signer signs checkpoints with a key the broker cannot rewrite history with
// (an Ed25519 private key file, a Vault transit key).
//
// KeyID names the key as verifiers know it; Alg is AlgEd25519 or
// AlgVaultTransit; Sign returns the raw signature over msg (the checkpoint
// stores it base64-encoded) and MUST honour ctx.
type Signer interface {
	KeyID() string
	Alg() string
	Sign(ctx context.Context, msg []byte) ([]byte, error)
}

// ErrUnknownKey is returned by a VerifyFunc for a key id it does not know.
var ErrUnknownKey = errors.New("unknown checkpoint key")

// VerifyFunc checks a checkpoint signature sig over msg made with key keyID
// and algorithm alg. It returns nil when the signature is valid, an error
// wrapping ErrUnknownKey when it does not know keyID, and any other error when
// the signature does not verify. It lets Verify check signatures made by keys
// it cannot hold itself, such as a Vault transit key.
type VerifyFunc func(keyID, alg string, msg, sig []byte) error

// Ed25519KeyID derives the key id of an Ed25519 public key:
// "ed25519:" followed by the first 16 hex digits of the SHA-256 of the 32
// public key bytes.
func Ed25519KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return "ed25519:" + hex.EncodeToString(sum[:8])
}

// Ed25519Signer signs checkpoints with an Ed25519 private key.
type Ed25519Signer struct {
	key   ed25519.PrivateKey
	keyID string
}

var _ Signer = (*Ed25519Signer)(nil)

// NewEd25519Signer reads an Ed25519 private key in PKCS#8 PEM ("PRIVATE
// KEY"), as `openssl genpkey -algorithm ed25519` writes it. Errors never carry
// key material.
func NewEd25519Signer(pemBytes []byte) (*Ed25519Signer, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("audit: checkpoint key: no PEM block found")
	}
	if block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("audit: checkpoint key: PEM block is %q, want \"PRIVATE KEY\" (PKCS#8)", block.Type)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, errors.New("audit: checkpoint key: not a valid PKCS#8 private key")
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("audit: checkpoint key: %T is not an Ed25519 key", k)
	}
	pub, _ := priv.Public().(ed25519.PublicKey)
	return &Ed25519Signer{key: priv, keyID: Ed25519KeyID(pub)}, nil
}

// KeyID returns the key id (Ed25519KeyID of the public key).
func (s *Ed25519Signer) KeyID() string { return s.keyID }

// Alg returns AlgEd25519.
func (s *Ed25519Signer) Alg() string { return AlgEd25519 }

// PublicKey returns the public key verifiers need.
func (s *Ed25519Signer) PublicKey() ed25519.PublicKey {
	pub, _ := s.key.Public().(ed25519.PublicKey)
	return pub
}

// Sign signs msg.
func (s *Ed25519Signer) Sign(ctx context.Context, msg []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return ed25519.Sign(s.key, msg), nil
}

// String names the key by its id, never by its value.
func (s *Ed25519Signer) String() string { return "ed25519-signer(" + s.keyID + ")" }

// LoadEd25519PublicKey reads an Ed25519 public key in PKIX PEM ("PUBLIC
// KEY"), as `openssl pkey -pubout` writes it, and returns it with its key id.
func LoadEd25519PublicKey(pemBytes []byte) (keyID string, pub ed25519.PublicKey, err error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return "", nil, errors.New("audit: public key: no PEM block found")
	}
	if block.Type != "PUBLIC KEY" {
		return "", nil, fmt.Errorf("audit: public key: PEM block is %q, want \"PUBLIC KEY\" (PKIX)", block.Type)
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return "", nil, fmt.Errorf("audit: public key: %w", err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return "", nil, fmt.Errorf("audit: public key: %T is not an Ed25519 key", k)
	}
	return Ed25519KeyID(pub), pub, nil
}

// Checkpoint builds the version 2 checkpoint event for the current head of
// the chain, with request id requestID, to be sealed at now: it signs
// CheckpointSigningInputV2 of the head, the time Seal(ev, now) gives the
// line and requestID with s. The caller seals the event next, with the
// same now and nothing sealed in between, so that it becomes the line right
// after the head it signs; Seal refuses it otherwise.
func (c *Chain) Checkpoint(ctx context.Context, s Signer, requestID string, now time.Time) (*Event, error) {
	if s == nil {
		return nil, errors.New("audit: checkpoint: no signer")
	}
	if err := ValidChainID(c.id); err != nil {
		return nil, fmt.Errorf("audit: checkpoint: %w", err)
	}
	t, err := c.sealTime(now)
	if err != nil {
		return nil, fmt.Errorf("audit: checkpoint: %w", err)
	}
	ts := t.Format(TimeFormat)
	sig, err := s.Sign(ctx, CheckpointSigningInputV2(c.id, c.seq, c.head, ts, requestID))
	if err != nil {
		return nil, fmt.Errorf("audit: checkpoint: sign with %s: %w", s.KeyID(), err)
	}
	return &Event{
		Type:      TypeCheckpoint,
		Time:      ts,
		RequestID: requestID,
		Checkpoint: &Checkpoint{
			Version:   CheckpointVersion,
			HeadSeq:   c.seq,
			HeadHash:  c.head,
			KeyID:     s.KeyID(),
			Alg:       s.Alg(),
			Signature: base64.StdEncoding.EncodeToString(sig),
		},
	}, nil
}
