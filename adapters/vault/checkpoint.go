package vault

// Audit checkpoints signed by a Vault transit key, and their verification.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"strings"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// TransitCheckpointSignerOptions configure NewTransitCheckpointSigner.
type TransitCheckpointSignerOptions struct {
	Client       *vaultapi.Client // from NewClient (required)
	Key          string           // transit key name (required): ed25519, or ecdsa-p256
	TransitMount string           // default "transit"
	KeyRefresh   time.Duration    // key metadata cache; default DefaultKeyRefresh
	// PublishDelay: a version Vault created less than this long ago is
	// not signed with while an older one can be; default
	// DefaultPublishDelay (as for JWTMinter).
	PublishDelay time.Duration
	Now          func() time.Time // default time.Now
	// Log gets Vault's warnings on the reads of the key and on its sign
	// answers, each once per operation and warning every 10 minutes (the
	// operation, the key's path and Vault's text; never the signature),
	// and VerifyOwn's WARN when it cannot read the key; default
	// slog.Default().
	Log *slog.Logger
}

// TransitCheckpointSigner signs audit checkpoints with a Vault transit key
// (audit.Signer): the private key never leaves Vault, so the broker cannot
// sign a rewritten history without Vault recording the request.
//
// It signs with the version JWTMinter would (read through a cache refreshed
// every KeyRefresh, so a rotation is picked up): the newest one Vault
// created at least PublishDelay ago, so that a checkpoint made right after
// a rotation verifies against the JWKS the broker serves (and verifiers
// cache) at that moment; min_encryption_version wins over the delay.
// KeyID is "<key>:<version>" of the version the last Sign used: the kid
// TransitKeys lists and the broker's JWKS serves for it. Alg is
// audit.AlgVaultTransit; the verifier takes the actual algorithm from the
// key (CheckpointVerifyFunc): Ed25519 over the signing input for an ed25519
// key, ECDSA P-256 with SHA-256 (raw r||s, Vault's
// marshaling_algorithm=jws) for an ecdsa-p256 key.
//
// Every signature Vault returns is checked against the key's public key
// before it is used. audit.Chain.Checkpoint calls Sign, then KeyID; a
// signer is meant for one sink, whose writer makes checkpoints one at a
// time (with several concurrent callers, a rotation between one caller's
// Sign and KeyID could name the other version).
type TransitCheckpointSigner struct {
	c       *vaultapi.Client
	mount   string
	name    string
	keys    *keyCache
	publish time.Duration
	log     *slog.Logger

	mu      sync.Mutex
	version int // of the last signature; 0 before the first
	// afterLatest are the kids of versions after the key's latest that
	// VerifyOwn logged (at most maxAfterLatestWarns).
	afterLatest map[string]bool
}

// maxAfterLatestWarns bounds the kids of versions after the key's latest
// that VerifyOwn logs a WARN for: whoever can write the audit file can name
// any number of them (the sink checks at most 100 lines that fail).
const maxAfterLatestWarns = 10

var _ audit.Signer = (*TransitCheckpointSigner)(nil)

// NewTransitCheckpointSigner validates o and returns a signer. It makes no
// Vault call; Load checks the key.
func NewTransitCheckpointSigner(o TransitCheckpointSignerOptions) (*TransitCheckpointSigner, error) {
	keys, errs := transitKeyCache("vault checkpoint signer", o.Client, o.TransitMount, o.KeyRefresh, o.Now, o.Log)
	if !validName(o.Key) || strings.ContainsAny(o.Key, "/:") {
		errs = append(errs, fmt.Errorf("vault checkpoint signer: bad transit key name %q", o.Key))
	}
	publish, err := publishDelay("vault checkpoint signer", o.PublishDelay)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	return &TransitCheckpointSigner{c: o.Client, mount: keys.mount, name: o.Key, keys: keys, publish: publish, log: log}, nil
}

// Load reads the key now, so that a missing key, a key of the wrong type or
// a broker token that cannot read it fails start-up rather than the first
// checkpoint. It sets the version KeyID names until the first Sign.
func (s *TransitCheckpointSigner) Load(ctx context.Context) error {
	k, err := s.keys.get(ctx, s.name)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.version == 0 {
		s.version = k.signingVersion(s.keys.now(), s.publish)
	}
	s.mu.Unlock()
	return nil
}

// KeyID returns "<key>:<version>" of the last signature (or of the version
// Load saw); the bare key name before either.
func (s *TransitCheckpointSigner) KeyID() string {
	s.mu.Lock()
	v := s.version
	s.mu.Unlock()
	if v == 0 {
		return s.name
	}
	return kid(s.name, v)
}

// Alg returns audit.AlgVaultTransit.
func (s *TransitCheckpointSigner) Alg() string { return audit.AlgVaultTransit }

// String names the key, never anything secret.
func (s *TransitCheckpointSigner) String() string {
	return "vault-transit-signer(" + s.mount + "/" + s.name + ")"
}

// Sign asks transit to sign msg with the key's signing version (see
// TransitCheckpointSigner) and returns
// the raw signature: 64 bytes, Ed25519 or ECDSA r||s. Errors are
// *broker.Error of kind ErrUnavailable, as for every Vault call.
func (s *TransitCheckpointSigner) Sign(ctx context.Context, msg []byte) ([]byte, error) {
	const op = "sign checkpoint"
	if err := ctx.Err(); err != nil {
		return nil, translate(op, err)
	}
	k, err := s.keys.get(ctx, s.name)
	if err != nil {
		return nil, err
	}
	version := k.signingVersion(s.keys.now(), s.publish)
	body := map[string]any{
		"input":       base64.StdEncoding.EncodeToString(msg),
		"key_version": version,
	}
	if k.Type == KeyTypeECDSAP256 {
		body["hash_algorithm"] = "sha2-256"
		body["marshaling_algorithm"] = "jws"
	}
	sec, err := s.c.Logical().WriteWithContext(ctx, s.mount+"/sign/"+s.name, body)
	if err != nil {
		if statusOf(err) == 400 {
			s.keys.forget(s.name) // rotated, or min_encryption_version raised
		}
		return nil, translate(op, err)
	}
	if sec == nil || sec.Data == nil {
		return nil, badResponse(op, "no data")
	}
	s.keys.warn.noteKey(op, s.mount+"/keys/"+s.name, sec.Warnings)
	str, _ := sec.Data["signature"].(string)
	sig, err := parseVaultSignature(str, version, k.Type)
	if err != nil {
		return nil, badResponse(op, err.Error())
	}
	if err := verifyCheckpointSig(k.Public[version], msg, sig); err != nil {
		s.keys.forget(s.name)
		return nil, badResponse(op, "signature does not verify with key "+kid(s.name, version))
	}
	s.mu.Lock()
	s.version = version
	s.mu.Unlock()
	return sig, nil
}

// VerifyOwn checks sig over msg, a checkpoint's, with the version of this
// signer's key that kid ("<key>:<version>") names, from the key cache (Load
// read it: no Vault call unless it aged out). known is false when kid names
// another key, a version older than the key's min_decryption_version (the
// broker keeps no public key of those: parseTransitKey), or the key cannot
// be read (both logged as a WARN naming the kid); a version newer than the
// key's latest is known, and does not verify (no such signature can exist:
// a WARN too, once per kid for at most maxAfterLatestWarns kids). The audit
// sink uses it at Open, so that a forged checkpoint line does not end the
// lines it adopts.
func (s *TransitCheckpointSigner) VerifyOwn(ctx context.Context, kid string, msg, sig []byte) (known, ok bool) {
	name, version, parsed := broker.ParseKeyID(kid)
	if !parsed || name != s.name {
		return false, false
	}
	k, err := s.keys.get(ctx, s.name)
	if err != nil {
		// Unknown: the sink counts the checkpoint (and the lines before
		// it) among the lines it adopts, an over-report; say why.
		s.log.Warn("audit: cannot check a checkpoint by the transit checkpoint key: its public keys could not be read from Vault; the sink counts the checkpoint among the lines no checkpoint covers (an over-report)",
			"key", s.name, "kid", kid, "err", err)
		return false, false
	}
	if version > k.Latest {
		// Known, and forged: no signature by that version can exist.
		// Said, bounded (a forger picks the kids).
		s.mu.Lock()
		warn := !s.afterLatest[kid] && len(s.afterLatest) < maxAfterLatestWarns
		if warn {
			if s.afterLatest == nil {
				s.afterLatest = map[string]bool{}
			}
			s.afterLatest[kid] = true
		}
		s.mu.Unlock()
		if warn {
			s.log.Warn("audit: a checkpoint names a version of the transit checkpoint key after its latest, which cannot have signed it (a forged line); the sink counts the checkpoint among the lines no checkpoint covers",
				"key", s.name, "kid", kid, "version", version, "latest_version", k.Latest)
		}
		return true, false
	}
	pub, found := k.Public[version]
	if !found {
		// Unknown: a version below the key's min_decryption_version,
		// whose public key the broker does not keep (parseTransitKey
		// drops it, and the JWKS does not serve it): said, as for a key
		// that cannot be read. The sink asks once per kid at Open.
		s.log.Warn("audit: cannot check a checkpoint by the transit checkpoint key: the version it names is below the key's min_decryption_version, and the broker keeps no public key of those versions; the sink counts the checkpoint among the lines no checkpoint covers (an over-report)",
			"key", s.name, "kid", kid, "version", version, "min_decryption_version", k.MinDecryption, "latest_version", k.Latest)
		return false, false
	}
	return true, verifyCheckpointSig(pub, msg, sig) == nil
}

// CheckpointVerifyFunc returns an audit.VerifyFunc for checkpoints a
// TransitCheckpointSigner made, given the transit public keys by kid (as
// TransitKeys lists them, or as read back from the broker's JWKS). The
// algorithm comes from the key, never from the checkpoint: an Ed25519 key
// verifies Ed25519 over msg, a P-256 key verifies ECDSA over SHA-256(msg)
// with the 64-byte r||s signature. A key's Alg, when set, must agree (EdDSA
// or RFC 9864's Ed25519, ES256). The checkpoint's alg must be audit.AlgVaultTransit. A kid that is
// not among keys gives an error wrapping audit.ErrUnknownKey.
//
// Keys of other types, keys without a kid, and one kid naming two different
// keys are errors.
func CheckpointVerifyFunc(keys []broker.PublicKey) (audit.VerifyFunc, error) {
	byKID := make(map[string]any, len(keys))
	var errs []error
	for i, k := range keys {
		if k.KID == "" {
			errs = append(errs, fmt.Errorf("keys[%d]: no kid", i))
			continue
		}
		pub, err := checkpointKey(k)
		if err != nil {
			errs = append(errs, fmt.Errorf("keys[%d] (kid %q): %w", i, k.KID, err))
			continue
		}
		if prev, ok := byKID[k.KID]; ok && !samePublicKey(prev, pub) {
			errs = append(errs, fmt.Errorf("keys[%d]: kid %q names two different keys", i, k.KID))
			continue
		}
		byKID[k.KID] = pub
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("vault checkpoint keys: %w", errors.Join(errs...))
	}
	return func(keyID, alg string, msg, sig []byte) error {
		pub, ok := byKID[keyID]
		if !ok {
			return fmt.Errorf("%w: %q", audit.ErrUnknownKey, keyID)
		}
		if alg != audit.AlgVaultTransit {
			return fmt.Errorf("checkpoint alg %q, want %q for transit key %s", alg, audit.AlgVaultTransit, keyID)
		}
		return verifyCheckpointSig(pub, msg, sig)
	}, nil
}

// checkpointKey returns the verification key of k: an ed25519.PublicKey or
// a P-256 *ecdsa.PublicKey whose Alg, if set, agrees.
func checkpointKey(k broker.PublicKey) (any, error) {
	switch pub := k.Key.(type) {
	case ed25519.PublicKey:
		if len(pub) != ed25519.PublicKeySize {
			return nil, errors.New("Ed25519 key has the wrong size")
		}
		// RFC 9864's fully specified "Ed25519" names the same signature
		// as "EdDSA" on an Ed25519 key (broker/authn agrees).
		if k.Alg != "" && k.Alg != "EdDSA" && k.Alg != "Ed25519" {
			return nil, fmt.Errorf("alg %q does not fit an Ed25519 key (want EdDSA or Ed25519)", k.Alg)
		}
		return pub, nil
	case *ecdsa.PublicKey:
		if pub == nil || pub.Curve != elliptic.P256() {
			return nil, errors.New("ECDSA key is not on P-256")
		}
		if k.Alg != "" && k.Alg != "ES256" {
			return nil, fmt.Errorf("alg %q does not fit a P-256 key (want ES256)", k.Alg)
		}
		return pub, nil
	}
	return nil, fmt.Errorf("unsupported key type %T (want Ed25519 or ECDSA P-256)", k.Key)
}

func samePublicKey(a, b any) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

// verifyCheckpointSig checks a raw transit signature over msg with pub.
func verifyCheckpointSig(pub any, msg, sig []byte) error {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize || !ed25519.Verify(k, msg, sig) {
			return errors.New("Ed25519 signature does not verify")
		}
		return nil
	case *ecdsa.PublicKey:
		if len(sig) != 64 {
			return fmt.Errorf("ES256 signature has %d bytes, want 64 (r||s)", len(sig))
		}
		h := sha256.Sum256(msg)
		r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		if !ecdsa.Verify(k, h[:], r, s) {
			return errors.New("ES256 signature does not verify")
		}
		return nil
	}
	return fmt.Errorf("unsupported key type %T", pub)
}
