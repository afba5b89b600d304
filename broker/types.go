package broker

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"
)

// Identity is a verified workload identity token. Claims holds every claim of
// the token; Raw tokens are never kept. Claims is read-only: an
// Authenticator may hand the same map to several calls (authn's
// verified-token cache does).
type Identity struct {
	IssuerName string         // policy issuer name (e.g. "k8s-prod")
	Iss        string         // the token's iss claim (a SPIFFE JWT-SVID without iss: its issuer's trust domain id)
	Sub        string         // the token's sub claim
	JTI        string         // the token's jti claim, if any
	Audience   []string       // the token's aud claim
	IssuedAt   time.Time      // zero when absent
	Expiry     time.Time      // always set (exp is required)
	Claims     map[string]any // all claims, decoded from JSON
	// TokenDigest tells one token from another where its claims may not
	// (SPIRE's JWT-SVIDs carry no jti; two of one SPIFFE ID issued in one
	// second have equal iss, sub and iat): the SHA-256 of the token as
	// signed, its header and payload, and of its signature, of an ECDSA
	// one its r only, so the twin (r, n-s) its holder can compute is the
	// same token. Zero when the Authenticator sets none, and for a token
	// with a jti (whose session the jti names).
	TokenDigest [sha256.Size]byte
}

// IdentityRef is the part of an identity recorded on issuances and in audit
// events.
type IdentityRef struct {
	Iss string `json:"iss"`
	Sub string `json:"sub"`
	JTI string `json:"jti,omitempty"`
}

// Ref returns the recorded part of the identity.
func (id *Identity) Ref() IdentityRef {
	return IdentityRef{Iss: id.Iss, Sub: id.Sub, JTI: id.JTI}
}

// Source is where a request came from.
type Source struct {
	IP        string `json:"ip,omitempty"`
	UserAgent string `json:"user_agent,omitempty"`
}

// CredentialRefs are every reference by which a minted credential can show up
// in another system's log. None of them is a secret. Mount is recorded at
// issuance so that revoking the credential does not depend on its grant
// still being in the policy in force; it is empty for kinds that do not
// need it and on records written before it was kept.
type CredentialRefs struct {
	Fingerprint string    `json:"fingerprint,omitempty"` // "sha256:<hex>" of the secret handed out
	Accessor    string    `json:"accessor,omitempty"`    // Vault token accessor
	LeaseID     string    `json:"lease_id,omitempty"`    // Vault lease id
	Username    string    `json:"username,omitempty"`    // generated user name
	JTI         string    `json:"jti,omitempty"`         // JWT id of a broker-signed JWT
	Serial      string    `json:"serial,omitempty"`      // certificate serial
	Mount       string    `json:"mount,omitempty"`       // Vault mount that issued it and revokes it (pki)
	ExpiresAt   time.Time `json:"expires_at"`
}

// Issuance is one minted credential and everything needed to trace and revoke it.
type Issuance struct {
	ID        string        `json:"issuance_id"`
	Workload  string        `json:"workload"`
	Owner     string        `json:"owner"`
	SessionID string        `json:"session_id"`
	Grant     string        `json:"grant"`
	Kind      string        `json:"kind"`
	Identity  IdentityRef   `json:"identity"`
	Act       []IdentityRef `json:"act,omitempty"`
	// Audience is the aud a broker-signed JWT was minted for (its grant's
	// at the mint); empty for other kinds, and in records written before
	// it was kept.
	Audience string         `json:"audience,omitempty"`
	Claims   map[string]any `json:"claims,omitempty"` // the identity claims the match used
	// MayAct holds the may_act claims (RFC 8693 §4.4) of the subject token
	// the credential was minted from, each as JSON, an object's iss filled
	// in from that token when it had none: its own claim, and those its
	// issuance carried when the subject token was a broker JWT. A broker
	// JWT presented as subject or actor token is held to each, as if it
	// carried them (docs/SPEC-ADDITIONS.md "Delegation"). Each is kept
	// once (appendKept): a chain of broker JWTs does not add a copy per
	// hop. Empty when there were none, and in records written before it
	// was kept.
	MayAct []json.RawMessage `json:"may_act,omitempty"`
	// ActMayAct holds, for a credential minted with an actor token, the
	// may_act claim of that token (iss filled in likewise) and, when it
	// was a broker JWT, all those its issuance kept (MayAct, ActMayAct):
	// the party acted for named who may act for it. A broker JWT
	// presented as actor token is held to these too, as acting for it is
	// acting for that party; as subject token, not (it acts itself).
	ActMayAct []json.RawMessage `json:"act_may_act,omitempty"`
	Source    Source            `json:"source"`
	IssuedAt  time.Time         `json:"issued_at"`
	ExpiresAt time.Time         `json:"expires_at"`
	Refs      CredentialRefs    `json:"credential"`
	RequestID string            `json:"request_id,omitempty"`
	// AuditChain is the chain id of the audit log that holds the issue
	// event: the issuing instance's own log. An auditor learns from it
	// whose log to read; with a shared store, each instance's
	// reconciliation judges the records of its own chain against its log.
	AuditChain string `json:"audit_chain,omitempty"`
	// Revocation state, set by the revocation flow.
	RevokedAt    time.Time `json:"revoked_at,omitzero"`
	RevocationID string    `json:"revocation_id,omitempty"`
}

// Active reports whether the issuance is unexpired and unrevoked at now.
func (is *Issuance) Active(now time.Time) bool {
	return is.RevokedAt.IsZero() && now.Before(is.ExpiresAt)
}

// Fingerprint is the SHA-256 of a secret as stored and logged: "sha256:<hex>".
// Every exchange and proxied request takes one: the text is built in one
// buffer, and a secret of up to 128 bytes (keytrail's credentials, Vault
// tokens) is hashed from a copy on the stack, so that the string is its only
// allocation.
func Fingerprint(secret string) string {
	const prefix = "sha256:"
	var sum [sha256.Size]byte
	if len(secret) <= 128 {
		// []byte(secret) would be allocated for a secret over 32 bytes.
		var b [128]byte
		sum = sha256.Sum256(b[:copy(b[:], secret)])
	} else {
		sum = sha256.Sum256([]byte(secret))
	}
	var buf [len(prefix) + 2*sha256.Size]byte
	copy(buf[:], prefix)
	hex.Encode(buf[len(prefix):], sum[:])
	return string(buf[:])
}

// Credential kinds (grant kinds).
const (
	KindVaultToken   = "vault_token"
	KindJWT          = "jwt"
	KindVaultDynamic = "vault_dynamic"
	KindProxy        = "proxy"
	KindPKI          = "pki"
)
