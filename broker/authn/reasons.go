package authn

import "github.com/keytrail/keytrail/broker"

// Reasons are the stable, coarse Reason values of the errors Authenticate
// returns, for audit events and metrics.
const (
	ReasonMalformed        = "malformed"
	ReasonOversized        = "oversized"
	ReasonUntrustedIssuer  = "untrusted_issuer"
	ReasonMissingIssuer    = "missing_issuer"
	ReasonUnsupportedAlg   = "unsupported_alg"
	ReasonBadTokenType     = "bad_token_type" // typ not in the issuer's token_types
	ReasonForbiddenHeader  = "forbidden_header"
	ReasonUnsupportedCrit  = "unsupported_crit"
	ReasonUnknownKey       = "unknown_key"
	ReasonBadSignature     = "bad_signature"
	ReasonTokenExpired     = "token_expired"
	ReasonNotYetValid      = "token_not_yet_valid"
	ReasonIssuedInFuture   = "issued_in_future"
	ReasonLifetimeTooLong  = "lifetime_too_long"
	ReasonBadAudience      = "bad_audience"
	ReasonMissingSubject   = "missing_subject"
	ReasonBadSubject       = "bad_subject" // sub holds a character no identifier has (BadSubjectAt)
	ReasonMissingExp       = "missing_exp"
	ReasonJWKSUnavailable  = "jwks_unavailable" // kind broker.ErrUnavailable
	ReasonContextCancelled = "canceled"         // kind broker.ErrUnavailable
)

// safeText is what a caller may be told: coarse, never a claim value.
var safeText = map[string]string{
	ReasonMalformed:       "identity token rejected: malformed",
	ReasonOversized:       "identity token rejected: too large",
	ReasonUntrustedIssuer: "identity token rejected: untrusted issuer",
	ReasonMissingIssuer:   "identity token rejected: missing issuer (iss claim)",
	ReasonUnsupportedAlg:  "identity token rejected: unsupported algorithm",
	ReasonBadTokenType:    "identity token rejected: wrong token type (typ)",
	ReasonForbiddenHeader: "identity token rejected: unsupported header",
	ReasonUnsupportedCrit: "identity token rejected: unsupported header",
	ReasonUnknownKey:      "identity token rejected: unknown signing key",
	ReasonBadSignature:    "identity token rejected: invalid signature",
	ReasonTokenExpired:    "identity token rejected: expired",
	ReasonNotYetValid:     "identity token rejected: not yet valid",
	ReasonIssuedInFuture:  "identity token rejected: not yet valid",
	ReasonLifetimeTooLong: "identity token rejected: lifetime too long",
	ReasonBadAudience:     "identity token rejected: wrong audience",
	ReasonMissingSubject:  "identity token rejected: missing subject",
	ReasonBadSubject:      "identity token rejected: subject (sub claim) holds a control or other non-printing character",
	ReasonMissingExp:      "identity token rejected: missing expiry",
}

// reject builds the ErrUnauthenticated error for reason. cause is for logs
// and must never contain the token or claim values.
func reject(reason string, cause error) *broker.Error {
	safe, ok := safeText[reason]
	if !ok {
		safe = "identity token rejected"
	}
	return broker.Errorf(broker.ErrUnauthenticated, reason, safe, cause)
}
