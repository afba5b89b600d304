package broker

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"

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

var sessionEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// SessionID derives a stable session id from an issuer name and the value
// that identifies one running instance (a pod uid, a run id+attempt, a token
// jti). The same inputs always give the same id; the raw value is not
// recoverable from it but is recorded with the issuance's claims.
func SessionID(issuerName, value string) string {
	sum := sha256.Sum256([]byte(issuerName + "\x00" + value))
	return PrefixSession + strings.ToLower(sessionEncoding.EncodeToString(sum[:16]))
}
