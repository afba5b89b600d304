package trace

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math/big"
	"slices"
	"strings"

	"github.com/keytrail/keytrail/broker"
)

// Kinds of value a query can match (Match.Kind).
const (
	KindIssuanceID   = "issuance_id"
	KindUseID        = "use_id"
	KindRevocationID = "revocation_id"
	KindRequestID    = "request_id"
	KindFingerprint  = "fingerprint"
	KindCredential   = "credential" // a raw credential, matched through its fingerprint
	KindAccessor     = "accessor"
	KindLeaseID      = "lease_id"
	KindUsername     = "username"
	KindJTI          = "jti"
	KindSerial       = "serial"
	// KindUpstreamRequestID: the request id an upstream API returned for a
	// proxied call (Stripe's Request-Id, AWS's x-amzn-RequestId, ...), as
	// its use_result event records it.
	KindUpstreamRequestID = "upstream_request_id"
	// KindVaultAuditLog: a value of an entry of Vault's audit log (an
	// HMAC'd accessor or token, a Vault request id), matched through the
	// issuance that entry's token names (VaultRefs).
	KindVaultAuditLog = "vault_audit_log"
)

// MaxQueryBytes bounds a query value (a raw credential can be a long JWT or
// a PEM certificate).
const MaxQueryBytes = 64 << 10

// candidate is one way of reading a query value: the index key to look up
// and, when the value is read as a fingerprint or a raw credential, the kind
// it is matched as.
type candidate struct {
	key  string // index key
	kind string // "" = whatever kind the index recorded for key
	// shown is the non-secret form of the value for Match.Value.
	shown string
	// serials are the canonical readings of the value as a certificate
	// serial (kind KindSerial; key is serialKey(serials[0])): one, or two
	// for an all-digit value, which reads as hex and as decimal. Issuances
	// under every reading are answers.
	serials []string
}

// keys returns the index keys of c: key, and the other serial readings.
func (c candidate) keys() []string {
	keys := []string{c.key}
	for i := 1; i < len(c.serials); i++ {
		keys = append(keys, serialKey(c.serials[i]))
	}
	return keys
}

// candidates returns the readings of q, most specific first: the value as
// given (ids, accessors, lease ids, user names, jtis, serials), the value
// as a fingerprint in any of its spellings, a serial in canonical form (an
// all-digit value reads as hex and as decimal: one candidate with both
// serials), and last the value as a raw credential (its fingerprint). It fails on an
// empty or oversized value.
func candidates(q string) ([]candidate, error) {
	orig := strings.TrimSpace(q)
	q = Unwrap(q)
	switch {
	case q == "":
		return nil, fmt.Errorf("%w: empty query", broker.ErrInvalidRequest)
	case len(q) > MaxQueryBytes:
		return nil, fmt.Errorf("%w: query longer than %d bytes", broker.ErrInvalidRequest, MaxQueryBytes)
	}
	var out []candidate
	add := func(c candidate) {
		for _, o := range out {
			if o.key == c.key {
				return
			}
		}
		out = append(out, c)
	}
	secret := LooksSecret(q)
	if !secret {
		add(candidate{key: q, shown: q})
	}
	if fp, ok := NormalizeFingerprint(q); ok {
		add(candidate{key: fp, kind: KindFingerprint, shown: fp})
	}
	if !secret {
		var serials []string
		if hexq, ok := cutPrefixFold(q, "serial="); ok {
			// As `openssl x509 -serial` prints it: always hex.
			if s, ok := canonicalSerial(hexq); ok {
				serials = append(serials, s)
			}
		} else {
			if s, ok := canonicalSerial(q); ok {
				serials = append(serials, s)
			}
			if s, ok := decimalSerial(q); ok && !slices.Contains(serials, s) {
				serials = append(serials, s)
			}
		}
		if len(serials) > 0 {
			add(candidate{key: serialKey(serials[0]), kind: KindSerial, shown: q, serials: serials})
		}
	}
	fp := broker.Fingerprint(q)
	add(candidate{key: fp, kind: KindCredential, shown: fp})
	if orig != q {
		// A credential that really has the wrapping's characters.
		fp := broker.Fingerprint(orig)
		add(candidate{key: fp, kind: KindCredential, shown: fp})
	}
	return out, nil
}

// Unwrap strips what other logs and tools put around a value: surrounding
// space, one pair of matching double or single quotes around the whole
// value, with no other such quote inside (PostgreSQL's
// `role "kt-iss-..." does not exist`, JSON, shells), an "Authorization:"
// and "Bearer " prefix (HTTP logs, curl commands), the header names of the
// ids the proxy sends upstream ("X-Request-Id: use_...",
// "X-Keytrail-Issuance: iss_...", as an upstream's log prints them), in
// any case and order, and PostgreSQL's user=<name> (log_line_prefix
// "user=%u,db=%d", "connection authorized: user=... database=...") or
// user="<name>": the name alone, up to the first space or comma (after
// the closing quote when quoted), what follows it being the line's other
// fields. A prefix with nothing after it is kept.
func Unwrap(v string) string {
	v = strings.TrimSpace(v)
	for {
		w := v
		for _, p := range []string{"authorization:", "x-request-id:", "x-keytrail-issuance:"} {
			if rest, ok := cutPrefixFold(w, p); ok && strings.TrimSpace(rest) != "" {
				w = strings.TrimSpace(rest)
			}
		}
		if rest, ok := cutPrefixFold(w, "bearer "); ok {
			w = strings.TrimSpace(rest)
		}
		if rest, ok := cutPrefixFold(w, "user="); ok {
			if name := logUser(rest); name != "" {
				w = name
			}
		}
		if len(w) >= 2 && (w[0] == '"' || w[0] == '\'') && w[len(w)-1] == w[0] &&
			strings.IndexByte(w[1:len(w)-1], w[0]) < 0 {
			// One quoted string: `"x" foo "y"` is two, kept as it is.
			w = strings.TrimSpace(w[1 : len(w)-1])
		}
		if w == v {
			return v
		}
		v = w
	}
}

// logUser is the user name of a log's user=<rest>: in quotes when rest
// starts with one (to the closing quote), else up to the first space or
// comma; "" when there is none.
func logUser(rest string) string {
	if len(rest) > 0 && (rest[0] == '"' || rest[0] == '\'') {
		if end := strings.IndexByte(rest[1:], rest[0]); end >= 0 {
			return strings.TrimSpace(rest[1 : 1+end])
		}
		return ""
	}
	if end := strings.IndexAny(rest, " \t,"); end >= 0 {
		rest = rest[:end]
	}
	return rest
}

// NormalizeFingerprint reads v as a SHA-256 fingerprint: "sha256:<hex>",
// bare hex (64 digits, any case), or the 32 bytes in standard or URL-safe
// base64, padded or not (optionally after "sha256:"). It returns the
// canonical "sha256:<lowercase hex>".
func NormalizeFingerprint(v string) (string, bool) {
	v = strings.TrimSpace(v)
	if rest, ok := cutPrefixFold(v, "sha256:"); ok {
		v = rest
	}
	if len(v) == 64 {
		if b, err := hex.DecodeString(v); err == nil && len(b) == 32 {
			return "sha256:" + hex.EncodeToString(b), true
		}
	}
	if len(v) == 43 || len(v) == 44 {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			if b, err := enc.Strict().DecodeString(v); err == nil && len(b) == 32 {
				return "sha256:" + hex.EncodeToString(b), true
			}
		}
	}
	return "", false
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return s, false
}

// serialSeparators removes the separators canonicalSerial allows (made
// once: a Replacer builds its tables at its first use, and Index.add reads
// the serial of every event with a credential).
var serialSeparators = strings.NewReplacer(":", "", "-", "")

// canonicalSerial reads v as a certificate serial written in hex, with or
// without ':' or '-' separators, in any case, with or without leading
// zeros: "7A:3B:...", "7a3b..." and "07a3b..." are the same serial, and
// so are "0f:3b:..." (Vault's byte pairs) and "f3b..." (the number printed
// in hex). It returns lowercase hex without separators or leading zeros
// ("0" for zero).
func canonicalSerial(v string) (string, bool) {
	s := strings.ToLower(serialSeparators.Replace(strings.TrimSpace(v)))
	if len(s) < 2 || len(s) > 128 {
		return "", false
	}
	for _, r := range s {
		if (r < '0' || r > '9') && (r < 'a' || r > 'f') {
			return "", false
		}
	}
	if s = strings.TrimLeft(s, "0"); s == "" {
		s = "0"
	}
	return s, true
}

// maxDecimalSerial is the number of decimal digits of the largest serial
// canonicalSerial reads (128 hex digits).
const maxDecimalSerial = 155

// decimalSerial reads v as a certificate serial written in decimal
// (PostgreSQL's ssl_client_serial(), Go's SerialNumber.String()) and
// returns it in canonicalSerial's form. An all-digit value is read both
// ways by candidates: which one was meant cannot be told.
func decimalSerial(v string) (string, bool) {
	s := strings.TrimSpace(v)
	if len(s) < 2 || len(s) > maxDecimalSerial {
		return "", false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return "", false
		}
	}
	n, ok := new(big.Int).SetString(s, 10)
	if !ok {
		return "", false
	}
	return n.Text(16), true
}

func serialKey(canon string) string { return "serial\x00" + canon }

// vaultSerial writes a canonical serial in the form Vault writes serials,
// and the stores hold them (adapters/vault records Vault's serial_number):
// lowercase hex byte pairs joined by ':'.
func vaultSerial(canon string) string {
	if len(canon)%2 == 1 {
		canon = "0" + canon
	}
	var b strings.Builder
	for i := 0; i < len(canon); i += 2 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(canon[i : i+2])
	}
	return b.String()
}

// LooksSecret reports whether v has the shape of a raw credential that must
// not be sent or shown as it is: a keytrail proxy credential (ktp_), a Vault
// token (hvs., hvb., hvr., or the legacy s./b./r. forms) or a JWT, also
// when quoted or after "Bearer " (see Unwrap). Callers send or show
// SafeQuery(v) instead. Other values may still be secrets; they are never
// kept, only looked up. A value that starts with a quote but is not one
// quoted string (`"hvs..." "x"`, an unbalanced `"hvs...`), which Unwrap
// keeps as it is, is read after that quote too.
func LooksSecret(v string) bool {
	v = Unwrap(v)
	if looksSecret(v) {
		return true
	}
	if len(v) > 1 && (v[0] == '"' || v[0] == '\'') {
		return looksSecret(Unwrap(v[1:]))
	}
	return false
}

// looksSecret is LooksSecret of a value already unwrapped.
func looksSecret(v string) bool {
	for _, p := range []string{"ktp_", "hvs.", "hvb.", "hvr."} {
		if strings.HasPrefix(v, p) {
			return true
		}
	}
	if len(v) > 20 && (strings.HasPrefix(v, "s.") || strings.HasPrefix(v, "b.") || strings.HasPrefix(v, "r.")) && !strings.ContainsAny(v[2:], ".:/ ") {
		return true
	}
	return strings.HasPrefix(v, "eyJ") && strings.Count(v, ".") == 2
}

// SafeQuery is the form of v to send to a keytrail server or put in a log:
// the fingerprint of the credential when v looks like a raw credential
// (LooksSecret; without its quotes or "Bearer "), v unwrapped otherwise.
func SafeQuery(v string) string {
	v = Unwrap(v)
	if LooksSecret(v) {
		return broker.Fingerprint(v)
	}
	return v
}
