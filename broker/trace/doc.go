// Package trace answers the auditor's question "where does this come from?"
// (SPEC "Security teams and auditors", issue #5). It builds an in-memory index
// from keytrail audit events and resolves any value found in a downstream log
// — a raw credential (hashed on arrival, never kept), a fingerprint
// (sha256:<hex>, bare hex, base64 or base64url SHA-256), an issuance, use or
// revocation id, a request id, a Vault accessor, a lease id, a generated user
// name, a JWT jti, an upstream API's own request id of a proxied call (as
// its use_result event records it) or a certificate serial (hex in any
// spelling, or decimal; an all-digit value reads both ways) — to one
// issuance, its uses and its revocations, rendered as a readable timeline or
// JSON.
//
// It also resolves Vault's own file audit device log against the index (each
// entry made with a keytrail-minted token names its issuance in the token
// meta, and in the accessor where the device keeps accessors in clear) and
// lists the attribution gaps: entries no keytrail issuance explains. The
// report builder (BuildReport) turns the same events plus the policy into the
// inventory of SPEC "keytrail report", rendered as text, JSON or one
// self-contained HTML file.
//
// The index is bounded (Options.MaxEvents, DefaultMaxEvents): it keeps only
// events that matter to tracing and reporting and drops the oldest past the
// bound. Live is the broker's online source: it tails the instance's own
// audit file and its rotated siblings incrementally, and falls back to the
// shared Store for issuances made by other instances.
//
// Nothing here ever stores or prints a raw query value that could be a
// secret: queries are kept only in their normalised, non-secret form.
package trace
