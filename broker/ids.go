package broker

import (
	"crypto/sha256"
	"encoding/base32"
	"sync"

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
//
// Every proxied request takes two and every exchange one or two, so the
// text is built in one buffer and the string is the only allocation. The
// ULID is what ulid.Make returns (the same time and the same monotonic
// entropy source); ulid.Make passes its result's entropy bytes to the
// source through an interface, which moves them to the heap each time:
// here the source writes into idEntropy instead.
func NewID(prefix string) string {
	const maxPrefix = 8
	if len(prefix) > maxPrefix {
		return prefix + ulid.Make().String()
	}
	var id ulid.ULID
	ms := ulid.Now()
	if err := id.SetTime(ms); err != nil {
		panic(err) // as ulid.Make: not before year 10889
	}
	idEntropy.mu.Lock()
	err := idEntropy.src.MonotonicRead(ms, idEntropy.buf[:])
	copy(id[6:], idEntropy.buf[:])
	idEntropy.mu.Unlock()
	if err != nil {
		panic(err) // as ulid.Make (ulid.ErrMonotonicOverflow)
	}
	var buf [maxPrefix + ulid.EncodedSize]byte
	n := copy(buf[:], prefix)
	_ = id.MarshalTextTo(buf[n : n+ulid.EncodedSize])
	return string(buf[:n+ulid.EncodedSize])
}

// idEntropy is where NewID has the entropy of its ULIDs written: ulid's
// default source (the one of ulid.Make, so ids stay monotonic with those
// it makes), and a buffer that is not on any goroutine's stack.
var idEntropy = struct {
	mu  sync.Mutex
	src ulid.MonotonicReader
	buf [10]byte
}{src: ulid.DefaultEntropy().(ulid.MonotonicReader)}

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
