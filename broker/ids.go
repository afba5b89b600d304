package broker

import (
	"crypto/sha256"
	"encoding/base32"

	"github.com/oklog/ulid/v2"
)

// ID prefixes (SPEC "Concepts").
const (
	PrefixIssuance   = "iss_"
	PrefixUse        = "use_"
	PrefixRevocation = "rev_"
	PrefixSession    = "ses_"
	PrefixRequest    = "req_"
	// PrefixDeployment starts a deployment id a Store creates
	// (Store.DeploymentID).
	PrefixDeployment = "dep_"
)

// NewID returns prefix + a new ULID (time-ordered, 80 bits of randomness,
// monotonic within one process).
func NewID(prefix string) string {
	return prefix + ulid.Make().String()
}

// sessionEncoding is base32 (RFC 4648) without padding, in lower case: the
// encoding session ids have always had (StdEncoding's text lower-cased),
// written in one step.
var sessionEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// SessionID derives a stable session id from an issuer name and the value
// that identifies one running instance (a pod uid, a run id+attempt, a token
// jti). The same inputs always give the same id; the raw value is not
// recoverable from it but is recorded with the issuance's claims.
func SessionID(issuerName, value string) string {
	h := sha256.New()
	h.Write([]byte(issuerName))
	h.Write([]byte{0})
	h.Write([]byte(value))
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	var buf [len(PrefixSession) + 26]byte // 26 = base32 of 16 bytes, unpadded
	copy(buf[:], PrefixSession)
	sessionEncoding.Encode(buf[len(PrefixSession):], sum[:16])
	return string(buf[:])
}
