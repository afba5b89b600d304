// Package authn verifies workload identity tokens (signed JWTs) against the
// trusted issuers of the policy and implements broker.Authenticator.
//
// What it promises:
//
//   - only tokens in JWS compact form (three base64url parts), no larger than
//     Options.MaxTokenBytes, are parsed, and their header and payload must
//     each be exactly one JSON object; parsing and signature verification are
//     done by github.com/golang-jwt/jwt/v5 with an explicit algorithm
//     allow-list per issuer (never "none", never HMAC);
//   - the issuer is chosen by the exact iss claim, or, for a token without
//     iss (a SPIFFE JWT-SVID of a SPIRE server without jwt_issuer), by the
//     trust domain of its sub, a SPIFFE ID, among the issuers whose issuer
//     is a trust-domain id spiffe://<td> (such an issuer takes only subs of
//     its trust domain, with or without iss); keys come only from that
//     issuer's configured JWKS (jwks_url, or OIDC discovery), never from the
//     token: tokens carrying jku, x5u, jwk or x5c headers are rejected, and so
//     are tokens with a crit header;
//   - a key is used only for the algorithm family it belongs to (RSA for
//     RS*/PS*, the matching NIST curve for ES*, Ed25519 for EdDSA and for
//     RFC 9864's fully specified Ed25519) and only if its own alg/use/key_ops
//     agree (a JWK's "EdDSA" and "Ed25519" agree with either, on an Ed25519
//     key: the signature is the same; use is "sig", none, or a SPIFFE
//     bundle's "jwt-svid": a bundle's "x509-svid" keys, X.509 CA keys, never
//     verify a token);
//   - an issuer with token_types accepts only tokens whose typ header is one
//     of them (RFC 8725 §3.11), compared without case and with
//     "application/" implied (RFC 7515 §4.1.9), "" standing for no typ
//     header; this is checked before any key is looked up;
//   - exp is required, nbf and iat may not lie in the future beyond the leeway
//     (at most 60 s), the lifetime (exp-iat, or exp-now without iat) may not
//     exceed the issuer's max_token_lifetime, aud must contain one of the
//     issuer's audiences and sub must be a non-empty string;
//   - every rejection is a *broker.Error of kind broker.ErrUnauthenticated
//     with a stable, coarse Reason (see the Reason constants) and a Safe text
//     that never contains the token or any claim value; when an issuer's keys
//     cannot be had it is broker.ErrUnavailable (reason "jwks_unavailable"),
//     never a 401.
//
// A token is decoded once: jwt/v5's key function routes it (header, iss,
// allow-lists, kid) and selects the key; the claim checks run afterwards
// with jwt/v5's Validator. Tokens whose signature verified are remembered by
// hash (verifiedCache), so presenting one again skips only the signature
// check.
//
// JWKS are fetched lazily, on first use, when the cached set is older than
// Options.CacheTTL (or a SPIFFE bundle's spiffe_refresh_hint, when shorter,
// but at least 30 s), and when a token names an unknown kid; fetches of one
// issuer are coalesced and happen at most once per Options.RefreshInterval.
// A request whose key is in a set past its CacheTTL is answered with it at
// once and leaves the refetch running (stale while revalidate); only a
// request whose key the cached set lacks waits for a fetch. When an
// issuer's JWKS endpoint is down (or serves an older copy of the held
// SPIFFE bundle: a lower spiffe_sequence, a key in common), its last good
// keys stay in use for Options.StaleFor past their CacheTTL. There are no background goroutines
// beyond the fetch a request starts (bounded by Options.FetchTimeout, and
// cut off by Close). A verifier that replaces another (Options.Previous)
// fetches an unchanged issuer's keys with the same HTTP client; Retire the
// replaced one, so the connections only it used are closed.
//
// keyfunc/v3 and jwkset's HTTP storage are not used for fetching because they
// refresh on a wall-clock ticker goroutine, fetch eagerly in the constructor,
// have no body-size cap, no per-issuer scheme rules and no bounded stale
// window, and cannot run on an injected clock. jwkset is used to parse and
// validate the individual JWKs.
package authn

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/policies"
)

// Defaults and limits of Options.
const (
	DefaultMaxTokenBytes   = 16 << 10
	DefaultLeeway          = 30 * time.Second
	MaxLeeway              = 60 * time.Second
	DefaultRefreshInterval = 30 * time.Second
	DefaultCacheTTL        = 5 * time.Minute
	DefaultStaleFor        = 10 * time.Minute
	DefaultMaxJWKSBytes    = 256 << 10
	DefaultFetchTimeout    = 10 * time.Second
)

// Options configures a Verifier. Zero values take the defaults above.
type Options struct {
	// Issuers are the trusted issuers, validated by New.
	Issuers []policies.Issuer
	// HTTPClient is the base client for JWKS and discovery fetches. Optional;
	// an issuer with ca_file needs its Transport to be nil or *http.Transport.
	// Redirects are limited and must obey the same scheme rules as the URL.
	HTTPClient *http.Client
	// ReadCAFile reads an issuer's ca_file; policies.ReadFile when nil. The
	// server passes the policy's Policy.CAFile, so that the bundle the
	// verifier trusts is the one the reload's CheckFiles read and checked,
	// not a second read of a file that may have changed since.
	ReadCAFile func(path string) ([]byte, error)
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Logger receives fetch failures; discarded when nil.
	Logger *slog.Logger
	// MaxTokenBytes caps the raw token size (default 16 KiB).
	MaxTokenBytes int
	// Leeway for exp, nbf and iat (default 30 s, at most 60 s).
	Leeway time.Duration
	// RefreshInterval is the minimum time between two JWKS fetches of one
	// issuer, whatever triggered them (default 30 s).
	RefreshInterval time.Duration
	// CacheTTL is how long fetched keys are used before a refetch is tried
	// (default 5 min; a SPIFFE bundle's spiffe_refresh_hint, when shorter,
	// but at least 30 s). Past it, a cached key still answers at once while
	// the refetch runs in the background.
	CacheTTL time.Duration
	// StaleFor is how long past CacheTTL the last good keys are still served
	// while refetches fail (default 10 min). After that, tokens of the
	// issuer fail with ErrUnavailable "jwks_unavailable".
	StaleFor time.Duration
	// MaxJWKSBytes caps the JWKS and discovery response bodies (default 256 KiB).
	MaxJWKSBytes int64
	// FetchTimeout bounds one fetch (discovery plus JWKS; default 10 s).
	FetchTimeout time.Duration
	// OnFetch, when set, is told of every JWKS fetch attempt (for metrics):
	// the policy issuer name and the fetch error, nil on success.
	OnFetch func(issuer string, err error)
	// VerifiedCacheSize bounds the cache of tokens whose signature verified
	// (see verifiedCache: a hit skips only the signature check, every other
	// check runs again). 0 = DefaultVerifiedCacheSize, negative = no cache.
	VerifiedCacheSize int
	// Previous, when set, is the verifier this one replaces (a policy
	// reload): an issuer whose key source (issuer, jwks_url, discovery,
	// ca_file path and content) is unchanged starts from Previous's last good keys and fetch
	// times instead of none, so a reload during the issuer's outage does
	// not drop keys StaleFor would still serve; with the same HTTPClient
	// and FetchTimeout it also fetches over Previous's HTTP client (its
	// keep-alive connection). Retire Previous once this one replaces it.
	Previous *Verifier
}

// Verifier verifies identity tokens. It is safe for concurrent use.
type Verifier struct {
	issuers         map[string]*issuerState // by exact iss
	byTrustDomain   map[string]*issuerState // SPIFFE trust domain issuers, by trust domain name
	now             func() time.Time
	log             *slog.Logger
	onFetch         func(issuer string, err error)
	maxTokenBytes   int
	leeway          time.Duration
	refreshInterval time.Duration
	cacheTTL        time.Duration
	staleFor        time.Duration
	maxJWKSBytes    int64
	fetchTimeout    time.Duration
	readCAFile      func(path string) ([]byte, error)
	router          *jwt.Parser // unverified parse, routing only (two-pass path)
	single          *jwt.Parser // decode + signature; claims checked by the issuer's validator
	verified        *verifiedCache
	sigChecks       atomic.Int64 // signature verifications attempted (tests)
	// fetches counts this verifier's background JWKS fetches until each has
	// also run onFetch (st.inflight is cleared before it: tests waiting on
	// it alone read onFetch's effects too early).
	fetches sync.WaitGroup
	// base is Options.HTTPClient (keepKeys shares an issuer's client only
	// between verifiers of the same base).
	base *http.Client
	// closing is canceled by Close, cutting off the running fetches;
	// closed (under closeMu) keeps new ones from starting; released (under
	// closeMu) is set once Retire or Close has released v's clients.
	closing   context.Context
	stopFetch context.CancelFunc
	closeMu   sync.Mutex
	closed    bool
	released  bool
}

// errClosed is the fetch error of a closed verifier.
var errClosed = errors.New("verifier closed (server stopping)")

// Retire is for a verifier a policy reload replaced: the requests that
// already hold v finish with it, as under the policy they started with. Its
// running JWKS fetches go on (bounded by FetchTimeout), a request on v that
// needs one still starts it, and the idle connections of the fetch clients
// that no verifier in force shares any more are closed, now and after each
// later fetch of v. Retire does not wait. A verifier that replaces v
// (Options.Previous) keeps its keys and shared clients: retire v after it
// is built. Retire after Retire or Close does nothing.
func (v *Verifier) Retire() {
	v.releaseClients()
}

// Close stops v (the server stops, or v never served): it cuts off v's
// running JWKS fetches (they are neither logged nor reported to OnFetch) and
// waits for them to end, starts no more (a token that needs a fetch gets
// ErrUnavailable "jwks_unavailable"; one whose key v holds still
// verifies), and closes the idle connections of the fetch clients that no
// verifier in force shares any more. Close is idempotent, and may follow
// Retire.
func (v *Verifier) Close() {
	v.closeMu.Lock()
	if v.closed {
		v.closeMu.Unlock()
		return
	}
	v.closed = true
	v.closeMu.Unlock()
	v.stopFetch()
	v.fetches.Wait()
	v.releaseClients()
}

// releaseClients counts v out of the users of its fetch clients, once.
func (v *Verifier) releaseClients() {
	v.closeMu.Lock()
	if v.released {
		v.closeMu.Unlock()
		return
	}
	v.released = true
	v.closeMu.Unlock()
	for _, st := range v.issuers {
		st.client.release()
	}
}

// isReleased reports whether v was retired or closed.
func (v *Verifier) isReleased() bool {
	v.closeMu.Lock()
	defer v.closeMu.Unlock()
	return v.released
}

var _ broker.Authenticator = (*Verifier)(nil)

// forbiddenHeaders name keys or key locations a token may not bring along.
var forbiddenHeaders = []string{"jku", "x5u", "jwk", "x5c"}

// New validates o and returns a Verifier. It does not fetch any keys: they are
// fetched on first use. ctx is only checked for cancellation.
func New(ctx context.Context, o Options) (*Verifier, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	v := &Verifier{
		issuers:         make(map[string]*issuerState, len(o.Issuers)),
		byTrustDomain:   map[string]*issuerState{},
		now:             o.Now,
		log:             o.Logger,
		onFetch:         o.OnFetch,
		maxTokenBytes:   o.MaxTokenBytes,
		leeway:          o.Leeway,
		refreshInterval: o.RefreshInterval,
		cacheTTL:        o.CacheTTL,
		staleFor:        o.StaleFor,
		maxJWKSBytes:    o.MaxJWKSBytes,
		fetchTimeout:    o.FetchTimeout,
		readCAFile:      o.ReadCAFile,
		base:            o.HTTPClient,
	}
	if v.readCAFile == nil {
		v.readCAFile = policies.ReadFile
	}
	if v.now == nil {
		v.now = time.Now
	}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	var errs []error
	def := func(name string, d *time.Duration, dflt time.Duration) {
		switch {
		case *d < 0:
			errs = append(errs, fmt.Errorf("authn: %s: must not be negative", name))
		case *d == 0:
			*d = dflt
		}
	}
	def("leeway", &v.leeway, DefaultLeeway)
	def("refresh_interval", &v.refreshInterval, DefaultRefreshInterval)
	def("cache_ttl", &v.cacheTTL, DefaultCacheTTL)
	def("stale_for", &v.staleFor, DefaultStaleFor)
	def("fetch_timeout", &v.fetchTimeout, DefaultFetchTimeout)
	if v.leeway > MaxLeeway {
		errs = append(errs, fmt.Errorf("authn: leeway: %v exceeds the maximum of %v", v.leeway, MaxLeeway))
	}
	switch {
	case v.maxTokenBytes < 0:
		errs = append(errs, errors.New("authn: max_token_bytes: must not be negative"))
	case v.maxTokenBytes == 0:
		v.maxTokenBytes = DefaultMaxTokenBytes
	}
	switch {
	case v.maxJWKSBytes < 0:
		errs = append(errs, errors.New("authn: max_jwks_bytes: must not be negative"))
	case v.maxJWKSBytes == 0:
		v.maxJWKSBytes = DefaultMaxJWKSBytes
	}
	names := map[string]bool{}
	for i, is := range o.Issuers {
		st, ierrs := v.newIssuerState(is, o.HTTPClient)
		where := fmt.Sprintf("issuers[%d]", i)
		if is.Source != "" {
			where = is.Source // the policy file and path it was declared at
		}
		for _, e := range ierrs {
			errs = append(errs, fmt.Errorf("authn: %s.%w", where, e))
		}
		if is.Name != "" {
			if names[is.Name] {
				errs = append(errs, fmt.Errorf("authn: issuers[%d].name: duplicate %q", i, is.Name))
			}
			names[is.Name] = true
		}
		if is.Issuer != "" {
			if _, dup := v.issuers[is.Issuer]; dup {
				errs = append(errs, fmt.Errorf("authn: issuers[%d].issuer: duplicate %q", i, is.Issuer))
			}
		}
		if len(ierrs) == 0 && st != nil {
			if _, dup := v.issuers[is.Issuer]; !dup {
				v.issuers[is.Issuer] = st
				if st.trustDomain != "" {
					// One issuer per trust domain: its issuer is
					// spiffe://<td>, and issuers are unique.
					v.byTrustDomain[st.trustDomain] = st
				}
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if o.Previous != nil {
		v.keepKeys(o.Previous)
	}
	v.closing, v.stopFetch = context.WithCancel(context.Background())
	v.router = jwt.NewParser(jwt.WithJSONNumber(), jwt.WithStrictDecoding())
	// No WithValidMethods here: route enforces policies.SupportsAlgorithm and the
	// issuer's own allow-list before any key is handed over.
	v.single = jwt.NewParser(jwt.WithJSONNumber(), jwt.WithStrictDecoding(), jwt.WithoutClaimsValidation())
	size := o.VerifiedCacheSize
	if size == 0 {
		size = DefaultVerifiedCacheSize
	}
	v.verified = newVerifiedCache(size)
	return v, nil
}

// Authenticate verifies raw and returns the identity it carries. Rejections
// are *broker.Error of kind broker.ErrUnauthenticated; missing keys are
// broker.ErrUnavailable.
func (v *Verifier) Authenticate(ctx context.Context, raw string) (*broker.Identity, error) {
	if err := ctx.Err(); err != nil {
		return nil, broker.Unavailable("canceled", 0, err)
	}
	if len(raw) > v.maxTokenBytes {
		return nil, reject(ReasonOversized, fmt.Errorf("token of %d bytes exceeds %d", len(raw), v.maxTokenBytes))
	}
	var sum [sha256.Size]byte
	if v.verified != nil {
		sum = tokenSum(raw)
		if e := v.verified.get(sum); e != nil {
			if id, err := v.fromCache(ctx, sum, e); err != errCacheStale {
				return id, err
			}
		}
	}
	if err := checkCompact(raw); err != nil {
		return nil, reject(ReasonMalformed, err)
	}

	// One pass: jwt/v5 decodes the token once, the key function routes it
	// by its (not yet trusted) header and iss and picks the key, then the
	// signature is checked. A token rejected before the key function ran is
	// handed to the two-pass path, which names the exact reason.
	var r routed
	claims := jwt.MapClaims{}
	v.sigChecks.Add(1)
	_, err := v.single.ParseWithClaims(raw, claims, func(tok *jwt.Token) (any, error) {
		if r.err = v.route(ctx, tok, &r); r.err != nil {
			return nil, r.err
		}
		r.reached = true
		return r.key, nil
	})
	switch {
	case r.err != nil:
		return nil, r.err
	case !r.reached:
		return v.authenticateTwoPass(ctx, raw, sum)
	case err != nil:
		return nil, signatureRejection(err)
	}
	return v.afterSignature(raw, &r, claims, sum)
}

// routed is what route learned about a token: its issuer, key selection and
// the key; err is the rejection, reached says the key was handed to jwt.
type routed struct {
	st      *issuerState
	kid     string
	hasKid  bool
	alg     string
	typ     any // the typ header, when hasTyp
	hasTyp  bool
	key     any
	err     error
	reached bool
}

// route checks the token's unverified header and iss and selects the key:
// forbidden headers, crit, the algorithm allow-lists, the trusted issuer, the
// kid's type, then the issuer's JWKS. Nothing it reads is trusted yet.
func (v *Verifier) route(ctx context.Context, tok *jwt.Token, r *routed) error {
	for _, h := range forbiddenHeaders {
		if _, ok := tok.Header[h]; ok {
			return reject(ReasonForbiddenHeader, fmt.Errorf("header %q present", h))
		}
	}
	if _, ok := tok.Header["crit"]; ok {
		return reject(ReasonUnsupportedCrit, errors.New("crit header present"))
	}
	alg, _ := tok.Header["alg"].(string)
	if !policies.SupportsAlgorithm(alg) {
		return reject(ReasonUnsupportedAlg, errors.New("alg missing or not supported"))
	}
	claims, _ := tok.Claims.(jwt.MapClaims)
	st, err := v.issuerFor(claims)
	if err != nil {
		return err
	}
	if !st.allowsAlg(alg) {
		return reject(ReasonUnsupportedAlg, fmt.Errorf("issuer %s does not allow alg %s", st.cfg.Name, alg))
	}
	// Before any key is looked up or fetched: a token of a kind the issuer
	// is not trusted for costs no JWKS fetch.
	typ, hasTyp := tok.Header["typ"]
	if err := st.checkType(hasTyp, typ); err != nil {
		return err
	}
	kidRaw, hasKid := tok.Header["kid"]
	kid, isString := kidRaw.(string)
	if hasKid && !isString {
		return reject(ReasonMalformed, errors.New("kid header is not a string"))
	}
	// An empty kid names no key: it is taken as absent, as go-jose and
	// go-oidc take it (they cannot tell the two apart) and as a JWK's empty
	// kid is taken. Else "kid": "" would pick the issuer's kid-less keys as
	// a set to try, where a token without kid gets the only usable key or
	// is refused as ambiguous.
	hasKid = hasKid && kid != ""
	key, kerr := v.resolveKey(ctx, st, kid, hasKid, alg)
	if kerr != nil {
		return kerr
	}
	*r = routed{st: st, kid: kid, hasKid: hasKid, alg: alg, typ: typ, hasTyp: hasTyp, key: key}
	return nil
}

// issuerFor chooses the token's issuer (its claims not yet trusted): the
// one whose issuer is exactly its iss; for a token without an iss member,
// legal in a SPIFFE JWT-SVID (a SPIRE server sets iss only with jwt_issuer
// configured), the SPIFFE trust domain issuer (issuer: spiffe://<td>) of
// its sub's trust domain, the sub parsed strictly as a SPIFFE ID. A trust
// domain's issuer takes only subs of its trust domain, with iss or without.
func (v *Verifier) issuerFor(claims jwt.MapClaims) (*issuerState, error) {
	rawIss, hasIss := claims["iss"]
	if !hasIss {
		sub, _ := claims["sub"].(string)
		td, err := workloadTrustDomain(sub)
		if err != nil {
			return nil, reject(ReasonMissingIssuer, fmt.Errorf("iss claim missing and sub is not a SPIFFE ID (a SPIRE server sets iss only with jwt_issuer configured): %w", err))
		}
		st := v.byTrustDomain[td]
		if st == nil {
			return nil, reject(ReasonUntrustedIssuer, errors.New("iss claim missing and no issuer is the sub's SPIFFE trust domain, spiffe://<trust domain> (a SPIRE server sets iss only with jwt_issuer configured)"))
		}
		return st, nil
	}
	iss, isString := rawIss.(string)
	if isString && iss == "" || rawIss == nil {
		return nil, reject(ReasonMissingIssuer, errors.New("iss claim null or empty"))
	}
	st := v.issuers[iss]
	if st == nil {
		return nil, reject(ReasonUntrustedIssuer, errors.New("iss is not a trusted issuer"))
	}
	if st.trustDomain != "" {
		sub, _ := claims["sub"].(string)
		td, err := workloadTrustDomain(sub)
		if err != nil {
			return nil, reject(ReasonUntrustedIssuer, fmt.Errorf("issuer %s is a SPIFFE trust domain and sub is not a SPIFFE ID in it: %w", st.cfg.Name, err))
		}
		if td != st.trustDomain {
			return nil, reject(ReasonUntrustedIssuer, fmt.Errorf("issuer %s is a SPIFFE trust domain and sub is not a SPIFFE ID in it", st.cfg.Name))
		}
	}
	return st, nil
}

// workloadTrustDomain returns the trust domain of sub, parsed strictly as
// the SPIFFE ID of a workload (one with a path), or why it is none: the
// rule it breaks (policies.ParseSPIFFEID's errors name no value), so the
// logged cause tells an over-long or malformed id from one of another
// trust domain.
func workloadTrustDomain(sub string) (string, error) {
	td, path, err := policies.ParseSPIFFEID(sub)
	if err == nil && path == "" {
		err = errors.New("a trust domain id, without the path a workload's SPIFFE ID has")
	}
	return td, err
}

// authenticateTwoPass is the path for tokens jwt/v5 refused before the key
// function ran (undecodable parts, an unknown alg): an unverified parse for
// routing, then the issuer's own parser. It gives each such token its exact
// reason, in the order the checks are documented.
func (v *Verifier) authenticateTwoPass(ctx context.Context, raw string, sum [sha256.Size]byte) (*broker.Identity, error) {
	tok, _, err := v.router.ParseUnverified(raw, jwt.MapClaims{})
	if err != nil && (tok == nil || errors.Is(err, jwt.ErrTokenMalformed)) {
		return nil, reject(ReasonMalformed, errors.New("undecodable header, claims or signature"))
	}
	var r routed
	if rerr := v.route(ctx, tok, &r); rerr != nil {
		return nil, rerr
	}
	if err != nil {
		return nil, reject(ReasonUnsupportedAlg, errors.New("alg missing or not supported"))
	}
	// Full verification with the one key selected, without claim checks
	// (afterSignature runs them, as on the one-pass path).
	claims := jwt.MapClaims{}
	_, err = v.single.ParseWithClaims(raw, claims, func(*jwt.Token) (any, error) { return r.key, nil })
	if err != nil {
		return nil, signatureRejection(err)
	}
	return v.afterSignature(raw, &r, claims, sum)
}

// signatureRejection maps a jwt/v5 error from signature verification: say
// nothing about claims.
func signatureRejection(err error) error {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return reject(ReasonMalformed, errors.New("token could not be decoded"))
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return reject(ReasonUnsupportedAlg, errors.New("token unverifiable"))
	default:
		return reject(ReasonBadSignature, errors.New("signature does not verify"))
	}
}

// afterSignature runs the claim checks on a token whose signature verified
// and remembers it in the verified-token cache.
func (v *Verifier) afterSignature(raw string, r *routed, claims jwt.MapClaims, sum [sha256.Size]byte) (*broker.Identity, error) {
	if err := checkPayloadIsOneValue(raw); err != nil {
		return nil, reject(ReasonMalformed, err)
	}
	if reason, cause := CheckClaimShapes(claims); reason != "" {
		return nil, reject(reason, cause)
	}
	if err := r.st.validatorFor(claims).Validate(claims); err != nil {
		return nil, reject(claimsReason(err), claimsCause(err))
	}
	// The digest only names the session of a token without a jti (see
	// broker's sessionID): a token with one is not hashed again.
	var digest [sha256.Size]byte
	if jti, _ := claims["jti"].(string); jti == "" {
		digest = tokenDigest(raw, r.alg)
	}
	id, err := v.identity(r.st, claims, digest)
	if err == nil && v.verified != nil {
		if _, isSet := r.key.(jwt.VerificationKeySet); !isSet {
			v.verified.put(sum, &verifiedEntry{st: r.st, kid: r.kid, hasKid: r.hasKid, alg: r.alg, typ: r.typ, hasTyp: r.hasTyp,
				key: r.key, claims: claims, digest: digest, until: id.Expiry.Add(v.leeway)}, v.now())
		}
	}
	return id, err
}

// errCacheStale says a cached verification no longer applies.
var errCacheStale = errors.New("authn: cached verification is stale")

// fromCache answers for a token that verified before. It returns
// errCacheStale when the entry no longer applies (the issuer's key for the
// token changed): the caller then verifies the token in full. Every check
// but the signature runs again, as in Authenticate.
func (v *Verifier) fromCache(ctx context.Context, sum [sha256.Size]byte, e *verifiedEntry) (*broker.Identity, error) {
	// The issuer's token_types: the same state routed the token, so this
	// holds, unless an entry ever outlives its issuer's configuration.
	if err := e.st.checkType(e.hasTyp, e.typ); err != nil {
		return nil, err
	}
	key, kerr := v.resolveKey(ctx, e.st, e.kid, e.hasKid, e.alg)
	if kerr != nil {
		// A full verification would stop at the same point with the same error.
		return nil, kerr
	}
	if !sameKey(key, e.key) {
		v.verified.forget(sum)
		return nil, errCacheStale
	}
	if err := e.st.validatorFor(e.claims).Validate(e.claims); err != nil {
		if errors.Is(err, jwt.ErrTokenExpired) {
			v.verified.forget(sum)
		}
		return nil, reject(claimsReason(err), claimsCause(err))
	}
	return v.identity(e.st, e.claims, e.digest)
}

// tokenDigest is broker.Identity.TokenDigest of raw, a token whose
// signature verified with alg: the SHA-256 of its signing input (header
// and payload as written, which the signature covers), a 0 byte, and its
// decoded signature, of an ECDSA signature (r, s) r only. For a given
// signing input and r, (r, n-s) is the only other valid signature, and its
// holder can compute it: both are one token. Other signatures admit no
// such twin (Ed25519's s is checked canonical; RSA's is the signer's
// alone), and the signature's base64 is decoded strictly.
func tokenDigest(raw, alg string) [sha256.Size]byte {
	i := strings.LastIndexByte(raw, '.')
	if i < 0 {
		return sha256.Sum256([]byte(raw))
	}
	sig, err := base64.RawURLEncoding.DecodeString(raw[i+1:])
	if err != nil {
		sig = []byte(raw[i+1:]) // not reached: the signature verified
	}
	switch alg {
	case "ES256", "ES384", "ES512":
		sig = sig[:len(sig)/2]
	}
	h := sha256.New()
	h.Write([]byte(raw[:i]))
	h.Write([]byte{0})
	h.Write(sig)
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
}

// identity applies the checks jwt/v5 has no option for and builds the result.
func (v *Verifier) identity(st *issuerState, claims jwt.MapClaims, digest [sha256.Size]byte) (*broker.Identity, error) {
	exp, _ := claims.GetExpirationTime()
	if exp == nil {
		return nil, reject(ReasonMissingExp, errors.New("exp claim missing"))
	}
	iat, _ := claims.GetIssuedAt()
	start := v.now()
	if iat != nil {
		start = iat.Time
	}
	if life := exp.Sub(start); life > st.maxLifetime {
		return nil, reject(ReasonLifetimeTooLong, fmt.Errorf("lifetime %v exceeds %v", life.Truncate(time.Second), st.maxLifetime))
	}
	sub, _ := claims["sub"].(string)
	if sub == "" {
		return nil, reject(ReasonMissingSubject, errors.New("sub claim missing or empty"))
	}
	if at := BadSubjectAt(sub); at >= 0 {
		r, _ := utf8.DecodeRuneInString(sub[at:])
		return nil, reject(ReasonBadSubject, fmt.Errorf("sub claim holds %U at byte %d", r, at))
	}
	aud, _ := claims.GetAudience()
	id := &broker.Identity{
		IssuerName:  st.cfg.Name,
		Iss:         st.cfg.Issuer,
		Sub:         sub,
		Audience:    []string(aud),
		Expiry:      exp.Time,
		Claims:      map[string]any(claims),
		TokenDigest: digest,
	}
	id.JTI, _ = claims["jti"].(string)
	if iat != nil {
		id.IssuedAt = iat.Time
	}
	return id, nil
}

// checkCompact accepts only the shape of JWS compact serialization: three
// base64url parts, the first two non-empty. An empty signature is left to
// the algorithm check ("none") and to verification.
func checkCompact(raw string) error {
	if raw == "" {
		return errors.New("empty token")
	}
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return errors.New("token contains characters outside base64url")
		}
	}
	// The parts are counted and looked at in place (strings.Split made a
	// slice of them for every token).
	if n := strings.Count(raw, ".") + 1; n != 3 {
		return fmt.Errorf("token has %d parts, want 3 (JWS compact)", n)
	}
	i := strings.IndexByte(raw, '.')
	if j := strings.LastIndexByte(raw, '.'); i == 0 || j == i+1 {
		return errors.New("token has an empty header or payload")
	}
	return nil
}

// tokenBufs holds copies of tokens being hashed for the verified-token
// cache: sha256.Sum256 takes a []byte, and converting the token made a
// heap copy of all of it (about 1 KB) on every exchange.
var tokenBufs = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// tokenSum is the SHA-256 of raw, the verified-token cache's key.
func tokenSum(raw string) [sha256.Size]byte {
	bp := tokenBufs.Get().(*[]byte)
	b := append((*bp)[:0], raw...)
	sum := sha256.Sum256(b)
	*bp = b[:0]
	tokenBufs.Put(bp)
	return sum
}

// payloadBufs holds decode buffers for checkPayloadIsOneValue.
var payloadBufs = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// checkPayloadIsOneValue checks that the payload of raw (compact, already
// decoded once by jwt/v5) is a single JSON value with nothing but whitespace
// after it (RFC 7519 §7.2 step 10). jwt/v5 reads claims with a json.Decoder
// when numbers are kept exact (WithJSONNumber), which stops after the first
// value and never looks at what follows; the header it reads with
// json.Unmarshal, which refuses trailing bytes. That the value is an object
// is already settled: jwt/v5 decoded it into a map (a JSON null decodes to
// no claims, refused for the missing iss before the signature is checked).
func checkPayloadIsOneValue(raw string) error {
	i := strings.IndexByte(raw, '.')
	j := strings.LastIndexByte(raw, '.')
	if i < 0 || j <= i {
		return errors.New("token is not in JWS compact form")
	}
	seg := raw[i+1 : j]
	bp := payloadBufs.Get().(*[]byte)
	defer payloadBufs.Put(bp)
	n := base64.RawURLEncoding.DecodedLen(len(seg))
	if cap(*bp) < n {
		*bp = make([]byte, n)
	}
	b := (*bp)[:n]
	n, err := base64.RawURLEncoding.Strict().Decode(b, []byte(seg))
	if err != nil || !oneValue(b[:n]) {
		return errors.New("payload is not exactly one JSON object (bytes follow it)")
	}
	return nil
}

// oneValue is json.Valid(b) for a b whose first JSON value is valid, as
// jwt/v5's decoding of the claims has shown it is: json.Valid scans every
// byte through encoding/json's state machine again (about 2/3 of this
// check's cost), where the end of an object already known to be valid is
// found by its brackets outside strings alone. After that end only JSON
// whitespace may follow. Anything else (a first value that is not an
// object, or an object not closed in b) goes to json.Valid.
func oneValue(b []byte) bool {
	end := endOfObject(b)
	if end < 0 {
		return json.Valid(b)
	}
	for _, c := range b[end:] {
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			return false
		}
	}
	return true
}

// endOfObject returns the index just past the object b starts with (after
// JSON whitespace), or -1 when b does not start with an object closed in
// it. It counts brackets outside strings, and in strings skips the byte
// after each backslash: it relies on the object being valid JSON.
func endOfObject(b []byte) int {
	i := 0
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	if i == len(b) || b[i] != '{' {
		return -1
	}
	depth := 0
	for ; i < len(b); i++ {
		switch b[i] {
		case '"':
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' {
					i++
				}
			}
		case '{', '[':
			depth++
		case '}', ']':
			if depth--; depth == 0 {
				return i + 1
			}
		}
	}
	return -1
}

// maxNumericDate is 9999-12-31T23:59:59Z: later dates are nonsense.
const maxNumericDate = 253402300799

// CheckClaimShapes checks the types jwt/v5 would otherwise coerce or let
// through: registered time claims must be numbers (json.Number, as the
// verifier decodes them) within a sane range, sub and jti strings, aud a
// string or an array of strings (ReasonMalformed); then that exp is
// present (ReasonMissingExp). It returns the reason and its cause (which
// names claims, never their values), or "" and nil. The verifier runs it on
// every token whose signature verified; keytrail policy explain
// --unverified runs it too, needing no key.
func CheckClaimShapes(c jwt.MapClaims) (string, error) {
	for _, k := range []string{"exp", "iat", "nbf"} {
		val, ok := c[k]
		if !ok {
			continue
		}
		n, isNum := val.(interface{ Float64() (float64, error) })
		if !isNum {
			return ReasonMalformed, fmt.Errorf("%s claim is not a number", k)
		}
		f, err := n.Float64()
		if err != nil || f < 0 || f > maxNumericDate {
			return ReasonMalformed, fmt.Errorf("%s claim is out of range", k)
		}
	}
	for _, k := range []string{"sub", "jti"} {
		if val, ok := c[k]; ok {
			if _, isStr := val.(string); !isStr {
				return ReasonMalformed, fmt.Errorf("%s claim is not a string", k)
			}
		}
	}
	switch aud := c["aud"].(type) {
	case nil, string:
	case []any:
		for _, a := range aud {
			if _, isStr := a.(string); !isStr {
				return ReasonMalformed, errors.New("aud claim is not a string or array of strings")
			}
		}
	default:
		return ReasonMalformed, errors.New("aud claim is not a string or array of strings")
	}
	if _, ok := c["exp"]; !ok {
		return ReasonMissingExp, errors.New("exp claim missing")
	}
	return "", nil
}

// claimsReason maps a jwt/v5 claims validation error to a reason. Shapes are
// already checked, so a missing required claim here is aud (exp is checked
// first, iss routed the token).
func claimsReason(err error) string {
	switch {
	case errors.Is(err, jwt.ErrInvalidType):
		return ReasonMalformed
	case errors.Is(err, jwt.ErrTokenExpired):
		return ReasonTokenExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return ReasonNotYetValid
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return ReasonIssuedInFuture
	case errors.Is(err, jwt.ErrTokenInvalidAudience), errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return ReasonBadAudience
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return ReasonUntrustedIssuer
	default:
		return ReasonMalformed
	}
}

// claimsCause keeps the library's claim error text, which names claims but
// never their values.
func claimsCause(err error) error {
	return fmt.Errorf("claims invalid: %w", err)
}

// BadSubjectAt is the byte offset of the first character of sub that no
// identifier holds, -1 when there is none: a control character (C0, DEL,
// C1: a newline forges a log line, an escape sequence rewrites a
// terminal showing keytrail report or trace), a format character (bidi
// marks, overrides and isolates, zero-width space, word joiner, invisible
// operators, a BOM, a soft hyphen: text that reads as another identity)
// but ZWNJ and ZWJ, a line or paragraph separator, or U+FFFD, what JSON
// decoding makes of invalid UTF-8 and lone surrogates (different bytes
// signed, one identity). Spaces and printable non-ASCII characters pass
// (a GitHub environment name may hold spaces), and so do U+200C ZWNJ and
// U+200D ZWJ, parts of Persian and Indic words and of emoji sequences (a
// GitHub custom sub template may include a workflow or environment name);
// trace and report show a sub holding them quoted (policies.Printable).
// keytrail policy explain --unverified refuses by it as the server does.
func BadSubjectAt(sub string) int {
	for i, r := range sub {
		if r < 0x20 || r == 0x7f {
			return i
		}
		if r < 0x80 || r == zwnj || r == zwj {
			continue
		}
		if r == utf8.RuneError || unicode.IsControl(r) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp) {
			return i
		}
	}
	return -1
}

// The two format characters a sub may hold (BadSubjectAt).
const (
	zwnj = '\u200c' // ZERO WIDTH NON-JOINER
	zwj  = '\u200d' // ZERO WIDTH JOINER
)
