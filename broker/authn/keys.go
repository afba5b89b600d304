package authn

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/policies"
)

// RSA modulus sizes accepted in a JWKS.
const (
	minRSABits = 2048
	maxRSABits = 8192
)

// maxRedirects bounds redirects followed by a JWKS or discovery fetch.
const maxRedirects = 3

// minRefreshHint is the shortest refresh interval a SPIFFE bundle's
// spiffe_refresh_hint may set: a hint of 1 s must not turn every request
// into a refetch (RefreshInterval bounds fetches anyway).
const minRefreshHint = 30 * time.Second

// Public key uses (JWK "use") of a SPIFFE bundle (the SPIFFE Trust Domain
// and Bundle spec, §4.2.2; the values are case sensitive).
const (
	useJWTSVID  = "jwt-svid"  // verifies JWT-SVIDs: a signature key
	useX509SVID = "x509-svid" // an X.509 CA key: never verifies a JWT
)

// issuerState is one trusted issuer with its key cache.
type issuerState struct {
	cfg         policies.Issuer
	maxLifetime time.Duration
	client      *sharedClient
	caSum       [sha256.Size]byte // SHA-256 of the ca_file bundle client trusts; zero without ca_file
	validator   *jwt.Validator    // the issuer's claim checks
	// trustDomain is the trust domain name of a SPIFFE issuer (issuer
	// spiffe://<td>), else "". Such an issuer also takes tokens without
	// iss; noIss is their validator: validator's checks but iss.
	trustDomain string
	noIss       *jwt.Validator

	mu          sync.Mutex
	set         *keySet    // last good key set; nil before the first success
	lastAttempt time.Time  // start of the last fetch, successful or not
	lastErr     error      // error of the last fetch, nil after a success
	inflight    *fetchCall // the running fetch, if any
	jwksURI     string     // discovered jwks_uri, cleared when a fetch fails
}

// keepKeys starts each issuer of v whose key source is unchanged in prev
// from prev's last good key set (immutable, so shared), discovered jwks_uri
// and last finished fetch attempt (so a reload does not bypass
// RefreshInterval), and fetches with prev's HTTP client (and so its idle
// keep-alive connection) when the client would be the same: the same base
// Options.HTTPClient and FetchTimeout. The key source is the jwks_url or
// discovery, and the ca_file by its content, not only its path: keys fetched over TLS that the
// previous bundle verified are not kept once the bundle at the same path
// changed (a CA rotation, or a CA withdrawn), so the new bundle is the one
// the issuer's keys are fetched under, at once.
func (v *Verifier) keepKeys(prev *Verifier) {
	for iss, st := range v.issuers {
		p, ok := prev.issuers[iss]
		if !ok || p.cfg.JWKSURL != st.cfg.JWKSURL || p.cfg.Discovery != st.cfg.Discovery ||
			p.cfg.CAFile != st.cfg.CAFile || p.caSum != st.caSum {
			continue
		}
		if prev.base == v.base && prev.fetchTimeout == v.fetchTimeout {
			// st's own client, just built, has no connection yet: dropped.
			st.client = p.client.share()
		}
		p.mu.Lock()
		st.set, st.jwksURI = p.set, p.jwksURI
		// A fetch running in prev (it serves prev's requests), or cut off
		// by prev's Close: v fetches for itself at once.
		if p.inflight == nil && !errors.Is(p.lastErr, errClosed) {
			st.lastAttempt, st.lastErr = p.lastAttempt, p.lastErr
		}
		p.mu.Unlock()
	}
}

// sharedClient is an issuer's fetch client, shared by the verifiers of
// successive policies whose fetch settings for the issuer are the same
// (keepKeys). refs counts the verifiers using it that are not closed; when
// the last one closes, the idle connections of the transport it owns (one
// New cloned, not the caller's Options.HTTPClient transport) are closed, so
// a replaced verifier leaves no keep-alive connection (and its two
// goroutines) behind for the transport's IdleConnTimeout.
type sharedClient struct {
	*http.Client
	owned bool // Transport is New's own clone

	mu   sync.Mutex
	refs int
}

// share counts one more verifier using c.
func (c *sharedClient) share() *sharedClient {
	c.mu.Lock()
	c.refs++
	c.mu.Unlock()
	return c
}

// release counts one verifier less using c, closing its idle connections
// when none is left.
func (c *sharedClient) release() {
	c.mu.Lock()
	c.refs--
	c.mu.Unlock()
	c.closeIdleIfUnused()
}

// closeIdleIfUnused closes the idle connections of c's own transport when
// no verifier in use (not retired or closed) shares c. A connection still
// busy is closed when it turns idle, unless a request starts on the
// transport first (net/http's Transport.CloseIdleConnections).
//
// It holds c.mu throughout, so a verifier sharing c from now on (share)
// does not have its connection closed by a decision taken before.
func (c *sharedClient) closeIdleIfUnused() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.refs == 0 && c.owned {
		c.CloseIdleConnections()
	}
}

// keySet is the usable part of a fetched JWKS.
type keySet struct {
	keys      []verifyKey
	fetchedAt time.Time
	// refreshHint is a SPIFFE bundle's spiffe_refresh_hint, 0 when the set
	// has none (or a malformed one); see freshFor.
	refreshHint time.Duration
	// sequence is a SPIFFE bundle's spiffe_sequence, when hasSequence
	// (see olderThan).
	sequence    uint64
	hasSequence bool
}

// olderThan reports whether s is a SPIFFE bundle older than held: both
// carry a spiffe_sequence and s's is lower. The SPIFFE Trust Domain and
// Bundle spec (§4.1.1) makes it increase with every change of the bundle,
// so a lower one may be a stale copy (a lagging replica or cache in front
// of the endpoint, a rollback): its keys may be ones the trust domain has
// since withdrawn, and it must not replace the held keys (see
// staleCopyOf for when it still does).
func (s *keySet) olderThan(held *keySet) bool {
	return held != nil && s.hasSequence && held.hasSequence && s.sequence < held.sequence
}

// staleCopyOf reports whether s, a bundle olderThan held, is refused: only
// while held still serves (before heldUntil) and s shares a key with it.
// A bundle sharing no key with the held one is not an older copy of it but
// a new bundle whose sequence restarted (a SPIRE server reinstalled, its
// datastore new): refused, every token of the trust domain would be,
// until the broker restarted, as a policy reload keeps the held set. Once
// the held keys are past their stale window they serve no token, and a
// refusal would only turn a possible rollback (a datastore restored from a
// backup) into an outage without end.
func (s *keySet) staleCopyOf(held *keySet, now, heldUntil time.Time) bool {
	if !now.Before(heldUntil) {
		return false
	}
	for _, k := range s.keys {
		for _, h := range held.keys {
			if sameKey(k.pub, h.pub) {
				return true
			}
		}
	}
	return false
}

// freshFor is how long after its fetch s is used without a refetch:
// CacheTTL, or the set's SPIFFE refresh hint when that is shorter (but
// never under minRefreshHint). Only the refetch comes earlier: the last
// good keys still serve until StaleFor past CacheTTL while refetches fail.
func (v *Verifier) freshFor(s *keySet) time.Duration {
	ttl := v.cacheTTL
	if s.refreshHint > 0 {
		ttl = min(ttl, max(s.refreshHint, minRefreshHint))
	}
	return ttl
}

// verifyKey is one public key with the JWK metadata that restricts its use.
type verifyKey struct {
	kid    string
	alg    string   // JWK "alg", may be empty
	use    string   // JWK "use": empty, "sig" or "jwt-svid"
	keyOps []string // JWK "key_ops", may be empty
	pub    any      // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
}

// fetchCall is one in-flight fetch that concurrent callers wait on.
type fetchCall struct{ done chan struct{} }

func (v *Verifier) newIssuerState(is policies.Issuer, base *http.Client) (*issuerState, []error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{field}, args...)...))
	}
	if is.Name == "" {
		bad("name", "required")
	}
	var td string
	switch {
	case is.Issuer == "":
		bad("issuer", "required")
	case policies.IsSPIFFEIssuer(is.Issuer):
		// The rule policy validation applies: a trust-domain id.
		var err error
		if td, err = policies.CheckSPIFFEIssuer(is.Issuer); err != nil {
			bad("issuer", "%v", err)
		}
	}
	switch {
	case is.JWKSURL != "" && is.Discovery:
		bad("jwks_url", "set either jwks_url or discovery, not both")
	case is.JWKSURL == "" && !is.Discovery:
		bad("jwks_url", "required (or discovery: true)")
	case is.JWKSURL != "":
		if err := checkFetchURL(is.JWKSURL); err != nil {
			bad("jwks_url", "%v", err)
		}
	case is.Discovery:
		if err := checkFetchURL(is.Issuer); err != nil {
			bad("issuer", "discovery needs an issuer URL: %v", err)
		}
	}
	if len(is.Audiences) == 0 {
		bad("audiences", "at least one audience is required")
	}
	for j, a := range is.Audiences {
		if a == "" {
			bad(fmt.Sprintf("audiences[%d]", j), "must not be empty")
		}
	}
	// The rule policy validation applies, so that a list a policy file
	// may not hold (HS256, an entry listed twice) is refused here too.
	for _, p := range policies.CheckAlgorithms(is.Algorithms) {
		bad(p.Path("algorithms"), "%s", p.Message)
	}
	// The rule policy validation applies, so that an entry a policy file
	// may not hold (a/b/c, "JWT; a=b") is refused here too.
	for _, p := range policies.CheckTokenTypes(is.TokenTypes) {
		bad(p.Path("token_types"), "%s", p.Message)
	}
	maxLife := time.Duration(is.MaxTokenLifetime)
	if maxLife <= 0 {
		bad("max_token_lifetime", "must be positive")
	}
	client, owned, caSum, err := v.httpClient(base, is.CAFile)
	if err != nil {
		bad("ca_file", "%v", err)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	// The lists the checks read are the verifier's own: a caller changing
	// its Options later changes nothing here.
	is.Algorithms, is.TokenTypes = slices.Clone(is.Algorithms), slices.Clone(is.TokenTypes)
	st := &issuerState{
		cfg:         is,
		maxLifetime: maxLife,
		client:      &sharedClient{Client: client, owned: owned, refs: 1},
		caSum:       caSum,
	}
	// The issuer's claim checks, run by jwt/v5's Validator after the
	// signature verified and again on every verified-token cache hit.
	checks := []jwt.ParserOption{
		jwt.WithExpirationRequired(),
		jwt.WithAudience(slices.Clone(is.Audiences)...),
		jwt.WithLeeway(v.leeway),
		jwt.WithIssuedAt(),
		jwt.WithTimeFunc(v.now),
	}
	st.validator = jwt.NewValidator(append(checks, jwt.WithIssuer(is.Issuer))...)
	if td != "" {
		st.trustDomain = td
		st.noIss = jwt.NewValidator(checks...)
	}
	return st, nil
}

// validatorFor is the validator of claims, routed to st (issuerFor): the
// one without the iss check only for a SPIFFE issuer's token without iss,
// so a token that has an iss always has it checked to be st's exactly.
func (st *issuerState) validatorFor(claims jwt.MapClaims) *jwt.Validator {
	if _, hasIss := claims["iss"]; !hasIss && st.noIss != nil {
		return st.noIss
	}
	return st.validator
}

func (st *issuerState) allowsAlg(alg string) bool {
	return slices.Contains(st.cfg.Algorithms, alg)
}

// checkType enforces the issuer's token_types on a token's typ header
// (hasTyp false: no typ header; typ: its value, any JSON type): RFC 8725
// §3.11, so that a token of another kind the same issuer signs (an access
// token, a logout token) is not taken for the identity token meant. The
// rule is policies.Issuer.CheckTypHeader (policy explain --unverified
// applies the same); the value is never named in the error.
func (st *issuerState) checkType(hasTyp bool, typ any) error {
	switch err := st.cfg.CheckTypHeader(hasTyp, typ); {
	case err == nil:
		return nil
	case errors.Is(err, policies.ErrTypNotString):
		return reject(ReasonMalformed, err)
	case !hasTyp:
		return reject(ReasonBadTokenType, fmt.Errorf("issuer %s requires a typ header (token_types)", st.cfg.Name))
	default:
		return reject(ReasonBadTokenType, fmt.Errorf("typ header not in issuer %s's token_types", st.cfg.Name))
	}
}

// checkFetchURL allows https, and plain http only for loopback hosts.
func checkFetchURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("not a valid URL")
	}
	if u.Host == "" || u.Opaque != "" {
		return errors.New("must be an absolute URL with a host")
	}
	if u.User != nil {
		return errors.New("must not carry user info")
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if policies.IsLoopbackHost(u.Hostname()) {
			return nil
		}
		return errors.New("plain http is allowed only for loopback hosts; use https")
	default:
		return fmt.Errorf("scheme %q is not allowed; use https", u.Scheme)
	}
}

// httpClient derives the fetch client of one issuer from base, with the
// issuer's CA bundle as its only roots when caFile is set; caSum is the
// SHA-256 of the bundle's bytes (zero without caFile); owned is whether
// c's Transport is a clone made here (not base's own).
func (v *Verifier) httpClient(base *http.Client, caFile string) (c *http.Client, owned bool, caSum [sha256.Size]byte, err error) {
	c = &http.Client{Timeout: v.fetchTimeout}
	if base != nil {
		cp := *base
		c = &cp
		if c.Timeout == 0 {
			c.Timeout = v.fetchTimeout
		}
	}
	if caFile != "" || c.Transport == nil {
		var t *http.Transport
		switch bt := c.Transport.(type) {
		case nil:
			if dt, ok := http.DefaultTransport.(*http.Transport); ok {
				t = dt.Clone()
			} else {
				t = &http.Transport{Proxy: http.ProxyFromEnvironment, TLSHandshakeTimeout: 10 * time.Second}
			}
		case *http.Transport:
			t = bt.Clone()
		default:
			return nil, false, caSum, fmt.Errorf("cannot apply ca_file to an HTTP client transport of type %T", bt)
		}
		if t.TLSClientConfig == nil {
			t.TLSClientConfig = &tls.Config{}
		}
		if t.TLSClientConfig.MinVersion < tls.VersionTLS12 {
			t.TLSClientConfig.MinVersion = tls.VersionTLS12
		}
		if caFile != "" {
			// Read as a policy file is (Options.ReadCAFile): a named
			// pipe, a device or a directory is refused, naming it, not
			// waited on at every New (each policy reload) or read
			// without end.
			pem, err := v.readCAFile(caFile)
			if err != nil {
				return nil, false, caSum, fmt.Errorf("read: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, false, caSum, fmt.Errorf("%s holds no PEM certificate", caFile)
			}
			caSum = sha256.Sum256(pem)
			t.TLSClientConfig.RootCAs = pool
		}
		c.Transport, owned = t, true
	}
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= maxRedirects {
			return errors.New("too many redirects")
		}
		if err := checkFetchURL(req.URL.String()); err != nil {
			return fmt.Errorf("redirect refused: %w", err)
		}
		// Never from https down to plain http, loopback included: a
		// redirect must not turn a key fetch into a request to a local
		// plain-http service.
		if len(via) > 0 && via[0].URL.Scheme == "https" && req.URL.Scheme != "https" {
			return errors.New("redirect refused: from https to plain http")
		}
		return nil
	}
	return c, owned, caSum, nil
}

// keyLookup is the outcome of looking a token's key up in a key set.
type keyLookup int

const (
	keyFound    keyLookup = iota
	keyMissing            // no key with this kid (or, without kid, none usable): a refetch may help
	keyUnusable           // the kid exists but is not usable for alg, or the choice is ambiguous
)

// lookup selects the key for a token. With a kid, the keys of that kid that
// are usable for alg (several are handed to jwt as a set). Without a kid
// (an empty kid counts as none, see route), the only key usable for alg.
func (s *keySet) lookup(kid string, hasKid bool, alg string) (any, keyLookup) {
	var usable []any
	named := false
	for _, k := range s.keys {
		if hasKid && k.kid != kid {
			continue
		}
		named = true
		if k.usableFor(alg) {
			usable = append(usable, k.pub)
		}
	}
	switch {
	case len(usable) == 1:
		return usable[0], keyFound
	case len(usable) > 1 && hasKid:
		return jwt.VerificationKeySet{Keys: toVerificationKeys(usable)}, keyFound
	case len(usable) > 1:
		return nil, keyUnusable // no kid and several candidates: refuse to guess
	case hasKid && named:
		return nil, keyUnusable
	default:
		return nil, keyMissing
	}
}

func toVerificationKeys(keys []any) []jwt.VerificationKey {
	out := make([]jwt.VerificationKey, len(keys))
	for i, k := range keys {
		out[i] = k
	}
	return out
}

// usableFor reports whether the key may verify a signature of alg: right key
// type and curve, and the JWK's own alg, use and key_ops agree. A SPIFFE
// bundle's "jwt-svid" key is a signature key; its "x509-svid" keys (and
// any other use) never are (parseJWKS already drops them).
func (k verifyKey) usableFor(alg string) bool {
	if k.alg != "" && k.alg != alg && !(isEd25519Alg(k.alg) && isEd25519Alg(alg)) {
		return false
	}
	if k.use != "" && k.use != "sig" && k.use != useJWTSVID {
		return false
	}
	if len(k.keyOps) > 0 && !slices.Contains(k.keyOps, "verify") {
		return false
	}
	switch pub := k.pub.(type) {
	case *rsa.PublicKey:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case *ecdsa.PublicKey:
		switch alg {
		case "ES256":
			return pub.Curve == elliptic.P256()
		case "ES384":
			return pub.Curve == elliptic.P384()
		case "ES512":
			return pub.Curve == elliptic.P521()
		}
		return false
	case ed25519.PublicKey:
		return isEd25519Alg(alg)
	default:
		return false
	}
}

// isEd25519Alg reports whether alg is a signature an Ed25519 key makes:
// "EdDSA" (RFC 8037; the curve is the key's) or RFC 9864's "Ed25519". A
// JWK's alg of one agrees with a token's of the other: an issuer moving to
// the fully specified name may not relabel its keys at the same time
// (jwkset, for one, writes "EdDSA" for every Ed25519 key). Only Ed25519
// keys are parsed (Go has no Ed448), so the two never mean different
// operations here.
func isEd25519Alg(alg string) bool { return alg == "EdDSA" || alg == AlgEd25519 }

// resolveKey finds the verification key for a token, fetching the issuer's
// JWKS when there is none yet, when the cached set is past CacheTTL, or when
// the kid is unknown; at most one fetch per RefreshInterval per issuer.
//
// A set past CacheTTL but within StaleFor that has the token's key answers
// at once: the refetch it is due runs in the background (stale while
// revalidate), so no request waits on a slow issuer while usable keys
// exist. A request whose key the set lacks (or holds only in a form
// unusable for its alg) waits for the fetch, bounded by FetchTimeout and
// its own context.
func (v *Verifier) resolveKey(ctx context.Context, st *issuerState, kid string, hasKid bool, alg string) (any, *broker.Error) {
	fetched := false
	for {
		st.mu.Lock()
		now := v.now()
		set := st.set
		usable := set != nil && now.Before(set.fetchedAt.Add(v.cacheTTL+v.staleFor))
		fresh := set != nil && now.Before(set.fetchedAt.Add(v.freshFor(set)))
		var (
			key    any
			result = keyMissing
		)
		if usable {
			key, result = set.lookup(kid, hasKid, alg)
		}
		mayFetch := !fetched && (st.inflight != nil || !now.Before(st.lastAttempt.Add(v.refreshInterval)))

		switch {
		case usable && result == keyFound:
			// Fresh, or stale within StaleFor: use what we have. A stale
			// set is refetched in the background when a refetch is allowed
			// and none is running; this request does not wait for it.
			if !fresh && mayFetch && st.inflight == nil {
				v.startFetch(ctx, st, now)
			}
			st.mu.Unlock()
			return key, nil
		case usable && result == keyUnusable && (fresh || !mayFetch):
			st.mu.Unlock()
			return nil, reject(ReasonUnknownKey, errors.New("no key of that kid is usable for the token's alg, or the key choice is ambiguous"))
		case usable && result == keyMissing && !mayFetch && st.lastErr != nil:
			// The issuer's JWKS could not be fetched just now: the kid may be
			// a new key we cannot see. A transient fault is a 503, not a 401.
			cause := fmt.Errorf("kid not in the cached JWKS and the issuer is unreachable: %w", st.lastErr)
			retry := st.lastAttempt.Add(v.refreshInterval).Sub(now)
			st.mu.Unlock()
			return nil, unavailable(st, retry, cause)
		case usable && result == keyMissing && !mayFetch:
			st.mu.Unlock()
			return nil, reject(ReasonUnknownKey, errors.New("kid not in the issuer's JWKS"))
		case !usable && !mayFetch:
			cause := st.lastErr
			retry := st.lastAttempt.Add(v.refreshInterval).Sub(now)
			st.mu.Unlock()
			if cause == nil {
				cause = errors.New("no keys fetched yet")
			}
			return nil, unavailable(st, retry, cause)
		}

		// Fetch (or join the running fetch) and look again.
		call := st.inflight
		if call == nil {
			call = v.startFetch(ctx, st, now)
		}
		st.mu.Unlock()
		fetched = true
		select {
		case <-call.done:
		case <-ctx.Done():
			return nil, broker.Unavailable(ReasonContextCancelled, 0, ctx.Err())
		}
	}
}

func unavailable(st *issuerState, retry time.Duration, cause error) *broker.Error {
	if retry < time.Second {
		retry = time.Second
	}
	return broker.Unavailable(ReasonJWKSUnavailable, retry, fmt.Errorf("issuer %s: keys unavailable: %w", st.cfg.Name, cause))
}

// startFetch starts a fetch of st's JWKS; st.mu must be held. The fetch runs
// on its own goroutine under FetchTimeout, detached from the cancellation of
// the request that started it, so that waiters are not failed by someone
// else's client going away, and a background refetch (see resolveKey)
// outlives the request that served stale keys.
//
// Close cancels the fetch; a closed verifier starts none (the attempt fails
// at once with errClosed).
func (v *Verifier) startFetch(ctx context.Context, st *issuerState, now time.Time) *fetchCall {
	call := &fetchCall{done: make(chan struct{})}
	st.lastAttempt = now
	v.closeMu.Lock()
	if v.closed {
		v.closeMu.Unlock()
		st.lastErr = errClosed
		close(call.done)
		return call
	}
	v.fetches.Add(1) // before Close's Wait: under closeMu, v not closed
	v.closeMu.Unlock()
	st.inflight = call
	jwksURI := st.jwksURI
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), v.fetchTimeout)
	stop := context.AfterFunc(v.closing, cancel)
	go func() {
		defer v.fetches.Done()
		defer cancel()
		defer stop()
		set, uri, err := v.fetch(fctx, st, jwksURI)
		closed := v.closing.Err() != nil
		st.mu.Lock()
		if err == nil && set.olderThan(st.set) {
			held := st.set
			if set.staleCopyOf(held, v.now(), held.fetchedAt.Add(v.cacheTTL+v.staleFor)) {
				// As a failed fetch: the held keys serve on, for StaleFor
				// past their CacheTTL at most, unless a later fetch brings a
				// bundle at least as new.
				err = fmt.Errorf("jwks: SPIFFE bundle spiffe_sequence %d is lower than the held bundle's %d and shares keys with it: not taken", set.sequence, held.sequence)
			} else {
				v.log.WarnContext(fctx, "authn: SPIFFE bundle spiffe_sequence went back; taken, as it shares no key with the held bundle (a new bundle, e.g. a reinstalled SPIRE server) or the held keys are past their stale window",
					"issuer", st.cfg.Name, "sequence", set.sequence, "held_sequence", held.sequence)
			}
		}
		switch {
		case err != nil && closed:
			// Cut off by Close (the policy was replaced, or the server
			// stops): not the issuer's failure, neither logged nor counted.
			st.lastErr = errClosed
		case err != nil:
			st.lastErr = err
			st.jwksURI = "" // rediscover next time
			v.log.WarnContext(fctx, "authn: jwks fetch failed", "issuer", st.cfg.Name, "err", err)
		default:
			set.fetchedAt = v.now()
			st.set = set
			st.lastErr = nil
			st.jwksURI = uri
			v.log.DebugContext(fctx, "authn: jwks fetched", "issuer", st.cfg.Name, "keys", len(set.keys))
		}
		st.inflight = nil
		st.mu.Unlock()
		if v.onFetch != nil && !(err != nil && closed) {
			v.onFetch(st.cfg.Name, err)
		}
		close(call.done)
		if v.isReleased() {
			// A fetch of a retired verifier (a request that held it when
			// a reload replaced it): the connection it used goes once
			// idle, unless a verifier in force shares the client.
			st.client.closeIdleIfUnused()
		}
	}()
	return call
}

// fetch gets the issuer's JWKS (discovering its URI first if needed) and
// returns its usable keys (fetchedAt not set) and the URI it came from.
func (v *Verifier) fetch(ctx context.Context, st *issuerState, jwksURI string) (*keySet, string, error) {
	if jwksURI == "" {
		jwksURI = st.cfg.JWKSURL
	}
	if jwksURI == "" {
		u, err := v.discover(ctx, st)
		if err != nil {
			return nil, "", err
		}
		jwksURI = u
	}
	body, err := v.get(ctx, st.client.Client, jwksURI)
	if err != nil {
		return nil, "", fmt.Errorf("jwks: %w", err)
	}
	set, err := parseJWKS(body)
	if err != nil {
		return nil, "", fmt.Errorf("jwks: %w", err)
	}
	return set, jwksURI, nil
}

// discover reads <issuer>/.well-known/openid-configuration and returns its
// jwks_uri, which must obey the same scheme rules as a configured URL (and be
// https when the issuer is). The document's issuer must be the configured
// one (OpenID Connect Discovery 4.3).
func (v *Verifier) discover(ctx context.Context, st *issuerState) (string, error) {
	u := strings.TrimSuffix(st.cfg.Issuer, "/") + "/.well-known/openid-configuration"
	body, err := v.get(ctx, st.client.Client, u)
	if err != nil {
		return "", fmt.Errorf("discovery: %w", err)
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", errors.New("discovery: document is not valid JSON")
	}
	if doc.Issuer != st.cfg.Issuer {
		return "", errors.New("discovery: document names another issuer")
	}
	if doc.JWKSURI == "" {
		return "", errors.New("discovery: document has no jwks_uri")
	}
	if err := checkFetchURL(doc.JWKSURI); err != nil {
		return "", fmt.Errorf("discovery: jwks_uri: %w", err)
	}
	// Never from an https issuer down to plain http, loopback included (as
	// for redirects): the document must not turn the key fetch into a
	// request to a local plain-http service.
	isu, err := url.Parse(u)
	ju, jerr := url.Parse(doc.JWKSURI)
	if err != nil || jerr != nil || isu.Scheme == "https" && ju.Scheme != "https" {
		return "", errors.New("discovery: jwks_uri: plain http for an https issuer")
	}
	return doc.JWKSURI, nil
}

// get fetches u and returns its body, at most MaxJWKSBytes of it.
func (v *Verifier) get(ctx context.Context, c *http.Client, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		return nil, fmt.Errorf("GET %s: status %d", u, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, v.maxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: read body: %w", u, err)
	}
	if int64(len(body)) > v.maxJWKSBytes {
		return nil, fmt.Errorf("GET %s: body exceeds %d bytes", u, v.maxJWKSBytes)
	}
	return body, nil
}

// parseJWKS keeps the public signature keys of a JWKS. Keys that jwkset
// cannot parse or validate, symmetric keys and keys of unsupported types are
// skipped; a set without a usable key, an empty one included, is an error,
// so that a broken response (an IdP or proxy answering {"keys": []}) never
// replaces a good cached set: the last good keys serve for StaleFor, then
// the issuer's tokens get ErrUnavailable, as when its endpoint is down. An
// issuer is distrusted by removing it from policy, not by emptying its JWKS.
//
// A SPIFFE bundle (the SPIFFE Trust Domain and Bundle spec, §4) is a JWKS
// too: its "jwt-svid" keys are signature keys, its "x509-svid" keys (X.509
// CA keys) are skipped before they are parsed, as are keys of any other
// use (§4.2.2: unknown uses are ignored), and its spiffe_refresh_hint, an
// integer number of seconds, is kept (see freshFor); a hint that is not a
// positive integer is ignored, not a reason to refuse the keys. Its
// spiffe_sequence, a non-negative integer, is kept (see olderThan); one
// that is not is ignored likewise.
func parseJWKS(body []byte) (*keySet, error) {
	var doc struct {
		Keys        *[]json.RawMessage `json:"keys"`
		RefreshHint json.RawMessage    `json:"spiffe_refresh_hint"`
		Sequence    json.RawMessage    `json:"spiffe_sequence"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, errors.New("not a JSON JWK set")
	}
	if doc.Keys == nil {
		return nil, errors.New(`no "keys" member`)
	}
	set := &keySet{refreshHint: refreshHint(doc.RefreshHint)}
	// JSON null unmarshals into a uint64 without an error, leaving 0: it
	// is no sequence, not sequence 0.
	if len(doc.Sequence) > 0 && string(doc.Sequence) != "null" && json.Unmarshal(doc.Sequence, &set.sequence) == nil {
		set.hasSequence = true
	}
	keys := make([]verifyKey, 0, len(*doc.Keys))
	x509Keys := 0
	for _, raw := range *doc.Keys {
		var meta struct {
			Use string `json:"use"`
		}
		if json.Unmarshal(raw, &meta) != nil {
			continue
		}
		// jwkset accepts only the registered uses ("sig", "enc"), so a
		// jwt-svid key is parsed without its use check; the use is kept
		// and checked by usableFor.
		var vopts jwkset.JWKValidateOptions
		switch meta.Use {
		case useX509SVID:
			x509Keys++
			continue
		case useJWTSVID:
			vopts.SkipUse = true
		}
		j, err := jwkset.NewJWKFromRawJSON(raw, jwkset.JWKMarshalOptions{Private: false}, vopts)
		if err != nil {
			continue
		}
		m := j.Marshal()
		k := verifyKey{kid: m.KID, alg: string(m.ALG), use: string(m.USE)}
		for _, op := range m.KEYOPS {
			k.keyOps = append(k.keyOps, string(op))
		}
		switch pub := j.Key().(type) {
		case *rsa.PublicKey:
			if bits := pub.N.BitLen(); bits < minRSABits || bits > maxRSABits {
				continue
			}
			k.pub = pub
		case *ecdsa.PublicKey:
			k.pub = pub
		case ed25519.PublicKey:
			k.pub = pub
		default:
			continue
		}
		keys = append(keys, k)
	}
	switch {
	case len(*doc.Keys) == 0:
		return nil, errors.New("the key set is empty")
	case len(keys) == 0 && x509Keys > 0:
		return nil, fmt.Errorf("none of %d keys is a usable public signature key (%d are SPIFFE x509-svid keys, never used for JWTs)", len(*doc.Keys), x509Keys)
	case len(keys) == 0:
		return nil, fmt.Errorf("none of %d keys is a usable public signature key", len(*doc.Keys))
	}
	set.keys = keys
	return set, nil
}

// refreshHint reads a SPIFFE bundle's spiffe_refresh_hint: a positive
// integer number of seconds, else 0 (none).
func refreshHint(raw json.RawMessage) time.Duration {
	var secs int64
	if len(raw) == 0 || json.Unmarshal(raw, &secs) != nil || secs <= 0 || secs > math.MaxInt64/int64(time.Second) {
		return 0
	}
	return time.Duration(secs) * time.Second
}
