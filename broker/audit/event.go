package audit

// Event types.
const (
	TypeIssue         = "issue"
	TypeDeny          = "deny"
	TypeUse           = "use"
	TypeUseResult     = "use_result"
	TypeIntrospect    = "introspect"
	TypeRevoke        = "revoke"
	TypeRevokeResult  = "revoke_result"
	TypeBlock         = "block"
	TypeUnblock       = "unblock"
	TypeAdmin         = "admin"
	TypePolicyLoad    = "policy_load"
	TypeCheckpoint    = "checkpoint"
	TypeSharedUse     = "shared_use_suspected"
	TypeOrphanRevoked = "orphan_revoked"
	TypeClockSkew     = "clock_skew"
	TypeStart         = "start"
	TypeStop          = "stop"
)

// Version is the event schema version written in "v".
const Version = 1

// Event is one audit record (SPEC "Audit log"). The chain fields (V, Seq,
// Time, Chain, Prev) are filled in by the Chain when the event is sealed;
// everything else by the caller. No field ever holds a secret, token or
// password.
type Event struct {
	V     int    `json:"v"`
	Seq   uint64 `json:"seq"`
	Time  string `json:"time"` // RFC 3339, UTC, nanoseconds (TimeFormat)
	Chain string `json:"chain"`
	Prev  string `json:"prev"`
	Type  string `json:"type"`

	RequestID    string      `json:"request_id,omitempty"`
	IssuanceID   string      `json:"issuance_id,omitempty"`
	UseID        string      `json:"use_id,omitempty"`
	RevocationID string      `json:"revocation_id,omitempty"`
	Workload     string      `json:"workload,omitempty"`
	Owner        string      `json:"owner,omitempty"`
	SessionID    string      `json:"session_id,omitempty"`
	Grant        string      `json:"grant,omitempty"`
	Kind         string      `json:"kind,omitempty"`
	Identity     *Identity   `json:"identity,omitempty"`
	Act          []Identity  `json:"act,omitempty"`
	Source       *Source     `json:"source,omitempty"`
	Credential   *Credential `json:"credential,omitempty"`
	Upstream     *Upstream   `json:"upstream,omitempty"`
	Outcome      *Outcome    `json:"outcome,omitempty"`
	Admin        string      `json:"admin,omitempty"`
	Reason       string      `json:"reason,omitempty"`
	// Details holds type-specific fields (policy file hashes, revocation
	// selectors and receipts, clock skew...). Never secrets.
	Details map[string]any `json:"details,omitempty"`
	// Checkpoint is set on checkpoint events only.
	Checkpoint *Checkpoint `json:"checkpoint,omitempty"`
}

// Identity is the identity token an action was taken with.
type Identity struct {
	Iss string `json:"iss"`
	Sub string `json:"sub"`
	JTI string `json:"jti,omitempty"`
}

// Source is the network source of a request.
type Source struct {
	IP        string `json:"ip,omitempty"`
	UserAgent string `json:"user_agent,omitempty"`
}

// Credential lists the non-secret references of a credential.
type Credential struct {
	Fingerprint string `json:"fingerprint,omitempty"`
	Accessor    string `json:"accessor,omitempty"`
	LeaseID     string `json:"lease_id,omitempty"`
	Username    string `json:"username,omitempty"`
	JTI         string `json:"jti,omitempty"`
	Serial      string `json:"serial,omitempty"`
	ExpiresAt   string `json:"expires_at,omitempty"`
}

// Upstream describes a proxied call. Status and Bytes describe the
// upstream's response and are set on use_result events when there was one:
// Status 0 (omitted) means the upstream sent no response; Bytes, then
// always set (0 included), counts the bytes of its body relayed to the
// caller, and is nil (omitted) where no response is described (a use event,
// or no response).
type Upstream struct {
	Method     string  `json:"method,omitempty"`
	Host       string  `json:"host,omitempty"`
	Path       string  `json:"path,omitempty"`
	Status     int     `json:"status,omitempty"`
	Bytes      *int64  `json:"bytes,omitempty"`
	DurationMS float64 `json:"duration_ms,omitempty"`
}

// Outcome is the result of the recorded action.
type Outcome struct {
	Status int    `json:"status"`
	Error  string `json:"error,omitempty"`  // OAuth error code, e.g. invalid_grant
	Reason string `json:"reason,omitempty"` // stable reason, e.g. token_expired
}

// Checkpoint signs the chain head: the seq and hash of the line before the
// checkpoint line, and, from version 2 on, the checkpoint line's own time
// and request_id (CheckpointMessage).
type Checkpoint struct {
	// Version is 2 for a checkpoint whose signature covers its own line's
	// time and request_id too (CheckpointSigningInputV2); 0 (absent) for a
	// version 1 checkpoint, which signs the head only
	// (CheckpointSigningInput), as brokers before version 2 wrote them.
	Version   int    `json:"version,omitempty"`
	HeadSeq   uint64 `json:"head_seq"`
	HeadHash  string `json:"head_hash"`
	KeyID     string `json:"key_id"`
	Alg       string `json:"alg"`       // "Ed25519" or "vault-transit"
	Signature string `json:"signature"` // base64 (std) of the signature over CheckpointMessage
}
