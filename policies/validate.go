package policies

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net"
	"net/url"
	"reflect"
	"regexp"
	"regexp/syntax"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
	"golang.org/x/text/unicode/norm"

	"github.com/keytrail/keytrail/policies/yamlcheck"
)

// Defaults applied before validation.
const (
	DefaultMaxTokenLifetime = 24 * time.Hour
	DefaultInjectFormat     = "{secret}"
	SecretPlaceholder       = "{secret}"
)

// Grant kinds.
const (
	KindVaultToken   = "vault_token"
	KindJWT          = "jwt"
	KindVaultDynamic = "vault_dynamic"
	KindProxy        = "proxy"
	KindPKI          = "pki"
)

// Admin roles.
const (
	RoleRevoke = "revoke"
	RoleTrace  = "trace"
	RoleReport = "report"
)

// maxPerSecond bounds a workload rate so the derived burst stays an int.
const maxPerSecond = 1e6

// minPerSecond is one request an hour: a slower rate draws a warning, as
// the Retry-After of its 429s is capped at an hour (the broker's
// maxRetryAfter) and cannot say when its token is back.
const minPerSecond = 1.0 / 3600

// Upper bounds of durations and bursts (docs/SPEC-ADDITIONS.md). Above
// maxDuration a ttl or max_token_lifetime is a problem: no short-lived
// credential or platform identity token lives 10 years, and what is added
// to them (a record's retention, a retiring key's leeway) must not
// overflow a time.Duration (292 years). The others draw warnings.
const (
	maxDuration = 10 * 365 * 24 * time.Hour // 87600h
	// vaultMaxLeaseTTL is Vault's default max lease TTL (32 days): a
	// longer ttl is cut to the mount's max unless it was raised.
	vaultMaxLeaseTTL = 768 * time.Hour
	// longJWTTTL: a JWT cannot be revoked where it is verified (without
	// introspection), and a transit key the policy stops naming stays in
	// the JWKS for the longest ttl that signed with it (across restarts
	// only with a shared store).
	longJWTTTL = 24 * time.Hour
	// longTokenLifetime: platform identity tokens live minutes to hours.
	longTokenLifetime = 7 * 24 * time.Hour
	// longBurst: a burst above a minute of requests at the rate (and
	// above this many) lets a client spend that minute at once.
	longBurst = 100
)

var (
	kinds         = []string{KindVaultToken, KindJWT, KindVaultDynamic, KindProxy, KindPKI}
	roles         = []string{RoleRevoke, RoleTrace, RoleReport}
	algorithms    = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"}
	proxyMethods  = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
	nameRE        = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	trustDomainRE = regexp.MustCompile(`^[a-z0-9._-]{1,255}$`)
	headerTokenRE = regexp.MustCompile("^[!#$%&'*+\\-.^_`|~0-9A-Za-z]+$")
)

// forbiddenHeaders may not carry an injected secret: they are hop-by-hop,
// change how the request is routed or framed, or are set by the proxy after
// the secret is injected (X-Request-Id, X-Keytrail-Issuance and
// Accept-Encoding would overwrite it). Proxy-Authorization is hop-by-hop and
// addressed to a proxy on the way, which consumes it: the upstream may never
// see it, and were the Transport ever given a proxy, net/http would send the
// secret to that proxy (a plain-http upstream) or replace it with the proxy
// URL's credentials. Proxy-Authenticate is a response header (hop-by-hop).
var forbiddenHeaders = []string{"Host", "Connection", "Content-Length", "Transfer-Encoding", "Te", "Trailer", "Upgrade", "Keep-Alive", "Proxy-Connection", "Proxy-Authorization", "Proxy-Authenticate", "X-Request-Id", "X-Keytrail-Issuance", "Accept-Encoding"}

// validator collects problems, and warnings (see Policy.Warnings); nothing
// stops at the first one.
type validator struct {
	problems []error
	warnings []error
}

func (v *validator) add(file, path, format string, args ...any) {
	v.problems = append(v.problems, &Problem{File: file, Path: path, Message: fmt.Sprintf(format, args...)})
}

func (v *validator) warn(file, path, format string, args ...any) {
	v.warnings = append(v.warnings, &Problem{File: file, Path: path, Message: fmt.Sprintf(format, args...)})
}

// loc is where an entry was declared.
type loc struct {
	file string
	path string // e.g. "grants[2]"
}

// String is "file: path", the file as it is: a key (caLines), compared
// with a Problem's File and Path.
func (l loc) String() string { return l.file + ": " + l.path }

// display is String for a message: the file quoted when not printable, as
// Problem.Error shows it.
func (l loc) display() string { return Printable(l.file) + ": " + l.path }

// compile defaults, validates and compiles decoded files.
func compile(files []parsedFile) (*Policy, error) {
	var v validator
	p := &Policy{
		issuerIdx:   map[string]int{},
		issByIss:    map[string]int{},
		workloadIdx: map[string]int{},
		grantIdx:    map[string]int{},
	}
	var issuerLocs, workloadLocs, grantLocs, adminLocs, exceptionLocs []loc

	for fi := range files {
		f := &files[fi].file
		name := files[fi].name
		if f.Version != 1 {
			if f.Version == 0 {
				v.add(name, "version", "required, must be 1")
			} else {
				v.add(name, "version", "unsupported version %d, must be 1", f.Version)
			}
		}
		for i := range f.Issuers {
			p.issuers = append(p.issuers, f.Issuers[i])
			issuerLocs = append(issuerLocs, loc{name, fmt.Sprintf("issuers[%d]", i)})
		}
		for i := range f.Workloads {
			p.workloads = append(p.workloads, f.Workloads[i])
			workloadLocs = append(workloadLocs, loc{name, fmt.Sprintf("workloads[%d]", i)})
		}
		for i := range f.Grants {
			p.grants = append(p.grants, f.Grants[i])
			grantLocs = append(grantLocs, loc{name, fmt.Sprintf("grants[%d]", i)})
		}
		for i := range f.Admins {
			p.admins = append(p.admins, f.Admins[i])
			adminLocs = append(adminLocs, loc{name, fmt.Sprintf("admins[%d]", i)})
		}
		for i := range f.Exceptions {
			p.exceptions = append(p.exceptions, f.Exceptions[i])
			exceptionLocs = append(exceptionLocs, loc{name, fmt.Sprintf("exceptions[%d]", i)})
		}
	}

	p.issuerLocs, p.grantLocs = issuerLocs, grantLocs
	for i := range p.issuers {
		p.issuers[i].Source = issuerLocs[i].display()
	}

	// Names first, so cross references can be checked against them.
	checkNames(&v, "issuer", issuerLocs, func(i int) string { return p.issuers[i].Name }, p.issuerIdx)
	checkNames(&v, "workload", workloadLocs, func(i int) string { return p.workloads[i].Name }, p.workloadIdx)
	checkNames(&v, "grant", grantLocs, func(i int) string { return p.grants[i].Name }, p.grantIdx)
	checkNames(&v, "admin", adminLocs, func(i int) string { return p.admins[i].Name }, map[string]int{})
	checkNames(&v, "exception", exceptionLocs, func(i int) string { return p.exceptions[i].Name }, map[string]int{})

	roots := fileRoots(files)
	for i := range p.issuers {
		l := issuerLocs[i]
		validateIssuer(&v, l, &p.issuers[i], written(roots(l.file), l.path+".max_token_lifetime"), roots(l.file))
		if iss := p.issuers[i].Issuer; iss != "" {
			if j, dup := p.issByIss[iss]; dup && p.issuers[i].TrustDomain() != "" {
				// Tokens without iss are routed by their sub's trust
				// domain: it may name one issuer only.
				v.add(issuerLocs[i].file, issuerLocs[i].path+".issuer", "trust domain %s is already claimed by %s; one issuer per trust domain", quoted(iss), issuerLocs[j])
			} else if dup {
				v.add(issuerLocs[i].file, issuerLocs[i].path+".issuer", "issuer %s is already declared by %s; iss values must be unique", quoted(iss), issuerLocs[j])
			} else {
				p.issByIss[iss] = i
			}
		}
	}
	for i := range p.grants {
		l := grantLocs[i]
		validateGrant(&v, l, &p.grants[i], func(path string) bool { return written(roots(l.file), path) },
			func(path string) bool { return writtenNull(roots(l.file), path) })
	}
	p.workloadMatch = make([]*matcher, len(p.workloads))
	p.allowed = make([]map[string]bool, len(p.workloads))
	for i := range p.workloads {
		w := &p.workloads[i]
		l := workloadLocs[i]
		if strings.TrimSpace(w.Owner) == "" {
			v.add(l.file, l.path+".owner", "required: every workload has exactly one owner")
		} else {
			checkOwner(&v, l.file, l.path+".owner", w.Owner)
		}
		p.workloadMatch[i] = compileMatch(&v, l, &w.Match, p, false)
		nullMatchFields(&v, l, roots(l.file))
		p.allowed[i] = map[string]bool{}
		for j, g := range w.Grants {
			gp := fmt.Sprintf("%s.grants[%d]", l.path, j)
			switch {
			case g == "":
				v.add(l.file, gp, "must not be empty")
			case p.allowed[i][g]:
				v.add(l.file, gp, "grant %s is listed twice", quoted(g))
			default:
				if _, ok := p.grantIdx[g]; !ok {
					v.add(l.file, gp, "unknown grant %s", quoted(g))
				}
			}
			p.allowed[i][g] = true
		}
		if w.Rate != nil {
			validateRate(&v, l, "rate", w.Rate, written(roots(l.file), l.path+".rate.burst"))
		}
		if w.ProxyRate != nil {
			validateRate(&v, l, "proxy_rate", w.ProxyRate, written(roots(l.file), l.path+".proxy_rate.burst"))
		}
		// A rate written without a value would read as no limit at all
		// (a template that expanded to nothing, say): refused, as an
		// empty burst is; a workload without a limit leaves it out.
		for _, f := range []string{"rate", "proxy_rate"} {
			if writtenNull(roots(l.file), l.path+"."+f) {
				v.add(l.file, l.path+"."+f, "no value: write {per_second: N}, or remove the field for no limit")
			}
		}
	}
	checkDisjoint(&v, p.workloads, workloadLocs)

	p.adminMatch = make([]*matcher, len(p.admins))
	for i := range p.admins {
		a := &p.admins[i]
		l := adminLocs[i]
		p.adminMatch[i] = compileMatch(&v, l, &a.Match, p, true)
		nullMatchFields(&v, l, roots(l.file))
		if len(a.Roles) == 0 {
			v.add(l.file, l.path+".roles", "required: at least one of %s", strings.Join(roles, ", "))
		}
		for j, r := range a.Roles {
			if !slices.Contains(roles, r) {
				v.add(l.file, fmt.Sprintf("%s.roles[%d]", l.path, j), "unknown role %s (want one of %s)", quoted(r), strings.Join(roles, ", "))
			}
		}
	}

	for i := range p.exceptions {
		e := &p.exceptions[i]
		l := exceptionLocs[i]
		if strings.TrimSpace(e.Owner) == "" {
			v.add(l.file, l.path+".owner", "required")
		} else {
			checkOwner(&v, l.file, l.path+".owner", e.Owner)
		}
		if strings.TrimSpace(e.Reason) == "" {
			v.add(l.file, l.path+".reason", "required")
		}
		if e.Expires.IsZero() {
			v.add(l.file, l.path+".expires", "required (YYYY-MM-DD)")
		}
	}

	if len(v.problems) > 0 {
		locate(v.problems, fileRoots(files))
		return nil, joinProblems(v.problems)
	}
	p.finish(files)
	// Lines are looked up now: the documents are not kept.
	root := fileRoots(files)
	p.workloadSrc = make([]string, len(workloadLocs))
	for i, l := range workloadLocs {
		p.workloadSrc[i] = fmt.Sprintf("%s, line %d", l.display(), NodeLine(root(l.file), l.path))
	}
	locate(v.warnings, root)
	for _, w := range v.warnings {
		p.warnings = append(p.warnings, w.(*Problem))
	}
	for _, f := range files {
		p.warnings = append(p.warnings, claimScalarWarnings(f.name, f.root)...)
	}
	p.caLines = map[string]int{}
	for _, l := range issuerLocs {
		p.caLines[l.String()+".ca_file"] = NodeLine(root(l.file), l.path+".ca_file")
	}
	for _, l := range grantLocs {
		p.caLines[l.String()+".proxy.ca_file"] = NodeLine(root(l.file), l.path+".proxy.ca_file")
	}
	return p, nil
}

// checkNames checks the name pattern and uniqueness within one section and
// fills idx with the first index of each valid name.
func checkNames(v *validator, section string, locs []loc, name func(int) string, idx map[string]int) {
	for i, l := range locs {
		n := name(i)
		switch {
		case n == "":
			v.add(l.file, l.path+".name", "required")
			continue
		case !nameRE.MatchString(n):
			// Still indexed below, so references to it do not cascade.
			v.add(l.file, l.path+".name", "%s must match %s", quoted(n), nameRE)
		}
		if j, dup := idx[n]; dup {
			v.add(l.file, l.path+".name", "duplicate %s %s (first declared at %s)", section, quoted(n), locs[j])
			continue
		}
		idx[n] = i
	}
}

// validateIssuer validates is; lifetimeWritten says whether its
// max_token_lifetime is written in the file (an omitted one defaults); doc
// is the file's document (nil when unknown).
func validateIssuer(v *validator, l loc, is *Issuer, lifetimeWritten bool, doc *yaml.Node) {
	if is.MaxTokenLifetime == 0 {
		if lifetimeWritten {
			// 0 means "no limit" to some readers (Vault's
			// explicit_max_ttl) and "the default" to others (Vault's
			// max_ttl): neither is guessed.
			v.add(l.file, l.path+".max_token_lifetime", "must be > 0 (omit it for the default, 24h)")
		}
		is.MaxTokenLifetime = Duration(DefaultMaxTokenLifetime)
	}
	if is.Issuer == "" {
		v.add(l.file, l.path+".issuer", "required: the exact iss value of its tokens")
	} else if IsSPIFFEIssuer(is.Issuer) {
		// A SPIFFE trust domain: it also takes tokens without iss whose
		// sub is a SPIFFE ID in it (SPIRE's JWT-SVIDs), keys from its
		// bundle endpoint (jwks_url); there is no discovery.
		if _, err := CheckSPIFFEIssuer(is.Issuer); err != nil {
			v.add(l.file, l.path+".issuer", "%s: %v", quoted(is.Issuer), err)
		} else if is.Discovery {
			v.add(l.file, l.path+".discovery", "a SPIFFE trust domain has no discovery document: set jwks_url to its bundle endpoint")
		}
	} else if u, err := url.Parse(is.Issuer); err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		v.add(l.file, l.path+".issuer", "must be an absolute http(s) URL")
	} else if is.Discovery && !secureOrLoopback(u) {
		v.add(l.file, l.path+".issuer", "must be https for discovery (http only for a loopback host)")
	}
	switch {
	case is.JWKSURL != "" && is.Discovery:
		v.add(l.file, l.path+".discovery", "set exactly one of jwks_url and discovery, not both")
	case is.JWKSURL == "" && !is.Discovery:
		v.add(l.file, l.path+".jwks_url", "required (or discovery: true)")
	case is.JWKSURL != "":
		u, err := url.Parse(is.JWKSURL)
		switch {
		case err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http"):
			v.add(l.file, l.path+".jwks_url", "must be an absolute https URL")
		case u.User != nil:
			v.add(l.file, l.path+".jwks_url", "must not carry credentials")
		case !secureOrLoopback(u):
			v.add(l.file, l.path+".jwks_url", "must be https (http only for a loopback host)")
		}
	}
	if len(is.Audiences) == 0 {
		v.add(l.file, l.path+".audiences", "required: at least one audience")
	}
	firstAud := map[string]int{}
	for i, a := range is.Audiences {
		j, dup := firstAud[a]
		if !dup {
			firstAud[a] = i
		}
		switch ap := fmt.Sprintf("%s.audiences[%d]", l.path, i); {
		case a == "":
			v.add(l.file, ap, "must not be empty")
		case strings.TrimSpace(a) != a:
			// As an owner: accepted, it would match no token, silently.
			v.add(l.file, ap, "%s starts or ends with a space: audiences are compared exactly with the token's aud, so it would match none", quoted(a))
		case dup:
			// Harmless to the check (any listed audience admits the
			// token) and loaded by earlier versions, so a warning,
			// not a problem: but another audience may have been
			// meant, and tokens for it are refused.
			v.warn(l.file, ap, "%s is already listed at audiences[%d]: it changes nothing; if another audience was meant, tokens for it are refused", quoted(a), j)
		}
	}
	for _, p := range CheckAlgorithms(is.Algorithms) {
		v.add(l.file, p.Path(l.path+".algorithms"), "%s", p.Message)
	}
	switch d := time.Duration(is.MaxTokenLifetime); {
	case d < 0:
		v.add(l.file, l.path+".max_token_lifetime", "must be > 0")
	case d > maxDuration:
		v.add(l.file, l.path+".max_token_lifetime", "%v is over 10 years (%v): identity tokens are short-lived", d, maxDuration)
	case d > longTokenLifetime:
		v.warn(l.file, l.path+".max_token_lifetime", "%v is over 7 days: tokens valid that long are accepted, and a stolen one is good for as long (platform tokens live minutes to hours)", d)
	}
	if d := time.Duration(is.MaxTokenLifetime); d > 0 && d < time.Second {
		// Valid (it fails closed), but a token's exp and iat are whole
		// seconds: only one that expires the second it is issued fits.
		v.warn(l.file, l.path+".max_token_lifetime", "%v is under 1s: token lifetimes (exp - iat) are whole seconds, so nearly every token is refused (lifetime_too_long)", d)
	}
	validateTokenTypes(v, l, is, doc)
	if is.SessionClaim != "" {
		paths := is.SessionClaims()
		if !strings.Contains(is.SessionClaim, "+") {
			// One path is looked up as written: spaces are ignored only
			// around a "+".
			paths = []string{is.SessionClaim}
		}
		if slices.ContainsFunc(paths, func(p string) bool { return !validClaimPath(p) }) {
			v.add(l.file, l.path+".session_claim", "%s is not a dotted claim path (or several joined by +)", quoted(is.SessionClaim))
		}
	}
}

// SupportsAlgorithm reports whether alg is one of the JWS algorithms an
// issuer may list (the SPEC's RS*, PS*, ES* and EdDSA, and RFC 9864's
// Ed25519; never "none" nor HMAC). It is the one list: policy validation
// and broker/authn (New, and the check of a token's alg header) read it.
func SupportsAlgorithm(alg string) bool { return slices.Contains(algorithms, alg) }

// SupportedAlgorithms returns the algorithms SupportsAlgorithm accepts, in
// the order problems list them (a copy).
func SupportedAlgorithms() []string { return slices.Clone(algorithms) }

// ListProblem is a problem of a list CheckAlgorithms or CheckTokenTypes
// checks: Index is the entry's, -1 for the list's.
type ListProblem struct {
	Index   int
	Message string
}

// Path is the field the problem names, for a list written at field:
// field[Index], or field itself for the list's problem.
func (p ListProblem) Path(field string) string {
	if p.Index < 0 {
		return field
	}
	return fmt.Sprintf("%s[%d]", field, p.Index)
}

// CheckAlgorithms is the rule of an issuer's algorithms list, which policy
// validation and broker/authn.New (for direct Options users) both apply:
// at least one entry, each supported (SupportsAlgorithm) and listed once.
// An entry listed again is named as the duplicate only, a refused one
// listed twice as refused, then as the duplicate. No problems: nil.
func CheckAlgorithms(algs []string) []ListProblem {
	if len(algs) == 0 {
		return []ListProblem{{-1, "required: at least one of " + strings.Join(algorithms, ", ")}}
	}
	var out []ListProblem
	bad := func(i int, format string, args ...any) {
		out = append(out, ListProblem{i, fmt.Sprintf(format, args...)})
	}
	first := map[string]int{}
	for i, a := range algs {
		j, dup := first[a]
		if !dup {
			first[a] = i
		}
		switch {
		case dup:
			// As a token_types entry listed twice: harmless to the
			// check, but a sign that another value was meant.
			bad(i, "%s is already listed at algorithms[%d]", quoted(a), j)
		case SupportsAlgorithm(a):
		case strings.EqualFold(a, "none"):
			bad(i, "%s is never allowed: it accepts unsigned tokens", quoted(a))
		case strings.HasPrefix(strings.ToUpper(a), "HS"):
			bad(i, "%s is not allowed: HMAC needs a shared secret, so anyone who can verify tokens could forge them", quoted(a))
		default:
			bad(i, "unsupported algorithm %s (want one of %s)", quoted(a), strings.Join(algorithms, ", "))
		}
	}
	return out
}

// tokenTypeRE is a typ value: a media type, type/subtype or a subtype alone
// (taken as application/<subtype>), each a restricted-name of RFC 6838
// §4.2; no parameters.
var tokenTypeRE = regexp.MustCompile(`^(?:[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/)?[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$`)

// validateTokenTypes checks an issuer's token_types (CheckTokenTypes), and
// refuses the field written without a value: read as absent it would
// accept any typ. An entry written without a value ("- ", "~") is refused
// before validation, as in every list (yamlcheck.NullEntries), so the
// decoded entries are those of the file, in place.
func validateTokenTypes(v *validator, l loc, is *Issuer, doc *yaml.Node) {
	fp := l.path + ".token_types"
	if writtenNull(doc, fp) {
		v.add(l.file, fp, `no value: list the typ values to accept (e.g. [JWT]; "" for tokens without typ), or remove the field to accept any`)
		return
	}
	for _, p := range CheckTokenTypes(is.TokenTypes) {
		v.add(l.file, p.Path(fp), "%s", p.Message)
	}
}

// CheckTokenTypes is the rule of a token_types list, which policy
// validation and broker/authn.New (for direct Options users) both apply:
// nil is any typ; an empty list would refuse every token; an entry is ""
// (NoTokenType: no typ header) or a media type, type/subtype or a subtype
// alone, without spaces around it or parameters, each listed once
// (compared as TokenTypeKey does). No problems: nil.
func CheckTokenTypes(types []string) []ListProblem {
	if types != nil && len(types) == 0 {
		return []ListProblem{{-1, `empty: every token would be refused; list the typ values to accept (e.g. [JWT]; "" for tokens without typ), or remove the field to accept any`}}
	}
	var out []ListProblem
	bad := func(i int, format string, args ...any) {
		out = append(out, ListProblem{i, fmt.Sprintf(format, args...)})
	}
	seen := map[string]int{}
	for i, t := range types {
		key := TokenTypeKey(t)
		switch {
		case t == NoTokenType:
			key = ""
		case strings.TrimSpace(t) != t:
			bad(i, "%s starts or ends with a space: typ values are compared without spaces, so it would match none", quoted(t))
			continue
		case strings.Contains(t, ";"):
			bad(i, "%s has media type parameters: write the type alone (e.g. at+jwt)", quoted(t))
			continue
		case !tokenTypeRE.MatchString(t):
			bad(i, `%s is not a media type (e.g. JWT, at+jwt, application/jwt; "" for tokens without typ)`, quoted(t))
			continue
		}
		if j, dup := seen[key]; dup {
			bad(i, "%s is the same typ as token_types[%d] (compared without case, application/ implied)", quoted(t), j)
			continue
		}
		seen[key] = i
	}
	return out
}

// quoted and quotedASCII name a value in a problem as %q and %+q do, a
// long one cut (yamlcheck.Quote).
var quoted, quotedASCII = yamlcheck.Quote, yamlcheck.QuoteASCII

// checkOwner refuses an owner with spaces around it, a control character,
// a character that cannot be seen or a decomposed spelling: owners are
// compared exactly (revoke --owner, blocks, the report), so
// "team-payments ", "team\u200bpayments" or an NFD "équipe" would be an
// owner of its own that looks like another and that a revocation of it
// misses, and a newline would forge lines of text output. An owner mixing
// Latin letters with Cyrillic or Greek ones (a Cyrillic "а" in
// "team-pаyments") draws a warning: a team may mean it.
func checkOwner(v *validator, file, path, owner string) {
	invisible := strings.IndexFunc(owner, func(r rune) bool { return !unicode.IsPrint(r) })
	switch {
	case strings.TrimSpace(owner) != owner:
		v.add(file, path, "%s starts or ends with a space: owners are compared exactly", quoted(owner))
	case strings.ContainsFunc(owner, unicode.IsControl):
		v.add(file, path, "%s contains a control character", quoted(owner))
	case invisible >= 0:
		r, _ := utf8.DecodeRuneInString(owner[invisible:])
		v.add(file, path, "%s contains %U, an invisible or non-printing character: owners are compared exactly", quoted(owner), r)
	case !norm.NFC.IsNormalString(owner):
		v.add(file, path, "%s is not in Unicode NFC form: owners are compared exactly; write %s (composed characters)", quotedASCII(owner), quotedASCII(norm.NFC.String(owner)))
	default:
		if a, b, r := mixedScripts(owner); a != "" {
			v.warn(file, path, "%s mixes %s and %s letters (%U %c): it looks like an owner it is not, and revoke --owner would tell them apart", quotedASCII(owner), a, b, r, r)
		}
	}
}

// lookalikeScripts are the scripts whose letters include look-alikes of
// each other's (Latin a, Cyrillic а, Greek α): an owner mixing two of them
// is likely a spoof or a slip.
var lookalikeScripts = []struct {
	name  string
	table *unicode.RangeTable
}{{"Latin", unicode.Latin}, {"Cyrillic", unicode.Cyrillic}, {"Greek", unicode.Greek}}

// mixedScripts reports two look-alike scripts s holds letters of (Latin
// first, then Cyrillic), with the first letter of the second; "" when s
// holds letters of at most one of them.
func mixedScripts(s string) (first, second string, r rune) {
	seen := make([]rune, len(lookalikeScripts))
	for _, c := range s {
		for i, sc := range lookalikeScripts {
			if seen[i] == 0 && unicode.Is(sc.table, c) {
				seen[i] = c
			}
		}
	}
	for i := range seen {
		for j := i + 1; j < len(seen); j++ {
			if seen[i] != 0 && seen[j] != 0 {
				return lookalikeScripts[i].name, lookalikeScripts[j].name, seen[j]
			}
		}
	}
	return "", "", 0
}

// secureOrLoopback reports whether u is https, or http to a loopback host.
func secureOrLoopback(u *url.URL) bool {
	return u.Scheme == "https" || (u.Scheme == "http" && IsLoopbackHost(u.Hostname()))
}

// IsLoopbackHost reports whether host is localhost (in any case: host
// names are case-insensitive), in 127.0.0.0/8 or ::1. It is the one
// loopback test of the policy, the identity-token verifier and the
// keytrail command (listen, pprof_listen, plain-http URLs), so they agree.
func IsLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// validClaimPath reports whether p is a non-empty dotted path with no empty
// segment and none that starts or ends with a space: claims are looked up
// by exact key, so " uid" would never be found.
func validClaimPath(p string) bool {
	if p == "" {
		return false
	}
	return !slices.ContainsFunc(strings.Split(p, "."), func(s string) bool { return s == "" || strings.TrimSpace(s) != s })
}

// validateRate validates the rate (or proxy_rate) r of the workload at l;
// burstWritten says whether its burst is written in the file (one left
// out defaults to ceil(per_second); a written 0 is a problem, as -1 is).
func validateRate(v *validator, l loc, field string, r *Rate, burstWritten bool) {
	switch {
	case math.IsNaN(r.PerSecond) || r.PerSecond <= 0:
		v.add(l.file, l.path+"."+field+".per_second", "must be > 0")
	case r.PerSecond > maxPerSecond:
		v.add(l.file, l.path+"."+field+".per_second", "must be at most %g", maxPerSecond)
	case r.Burst == 0 && !burstWritten:
		r.Burst = int(math.Ceil(r.PerSecond))
	}
	if r.PerSecond > 0 && r.PerSecond < minPerSecond {
		v.warn(l.file, l.path+"."+field+".per_second", "%g is less than one request an hour (1/3600): a 429's Retry-After says at most an hour, and a client that comes back then is refused again until its token is back", r.PerSecond)
	}
	switch {
	case r.Burst < 0:
		v.add(l.file, l.path+"."+field+".burst", "must be >= 1")
	case r.Burst == 0 && burstWritten:
		v.add(l.file, l.path+"."+field+".burst", "must be >= 1 (omit it for the default, ceil(per_second))")
	case r.Burst > longBurst && float64(r.Burst) > 60*r.PerSecond:
		v.warn(l.file, l.path+"."+field+".burst", "%d is more than a minute of requests at per_second %g: a client can spend them all at once", r.Burst, r.PerSecond)
	}
}

// compileMatch validates m and compiles it. Admin matches may omit the
// subject but must say something.
func compileMatch(v *validator, l loc, m *Match, p *Policy, admin bool) *matcher {
	mp := l.path + ".match"
	c := &matcher{issuer: m.Issuer, subject: m.Subject, hasSubject: m.Subject != "", subjectPattern: m.SubjectPattern}
	var is *Issuer
	if m.Issuer == "" {
		v.add(l.file, mp+".issuer", "required")
	} else if i, ok := p.issuerIdx[m.Issuer]; !ok {
		v.add(l.file, mp+".issuer", "unknown issuer %s", quoted(m.Issuer))
	} else {
		is = &p.issuers[i]
		if is.TrustDomain() != "" {
			c.absentIss = is.Issuer
		}
	}
	switch {
	case m.Subject != "" && m.SubjectPattern != "":
		v.add(l.file, mp+".subject_pattern", "set exactly one of subject and subject_pattern, not both")
	case admin && m.Subject == "" && m.SubjectPattern == "" && len(m.Claims) == 0 && len(m.ClaimPatterns) == 0:
		v.add(l.file, mp, "required: at least one of subject, subject_pattern, claims, claim_patterns")
	case !admin && m.Subject == "" && m.SubjectPattern == "":
		v.add(l.file, mp+".subject", "required (or subject_pattern)")
	}
	if m.SubjectPattern != "" {
		re, err := anchored(m.SubjectPattern)
		if err != nil {
			v.add(l.file, mp+".subject_pattern", "invalid regexp: %s", regexpReason(err, m.SubjectPattern))
		}
		c.subjectRE = re
	}
	for _, k := range sortedKeys(m.Claims) {
		kp := fmt.Sprintf("%s.claims[%q]", mp, k)
		if !validClaimPath(k) {
			v.add(l.file, kp, "%s is not a dotted claim path", quoted(k))
		}
		c.claims = append(c.claims, claimCheck{path: k, want: m.Claims[k]})
	}
	for _, k := range sortedKeys(m.ClaimPatterns) {
		kp := fmt.Sprintf("%s.claim_patterns[%q]", mp, k)
		if !validClaimPath(k) {
			v.add(l.file, kp, "%s is not a dotted claim path", quoted(k))
		}
		re, err := anchored(m.ClaimPatterns[k])
		if err != nil {
			v.add(l.file, kp, "invalid regexp: %s", regexpReason(err, m.ClaimPatterns[k]))
		}
		c.patterns = append(c.patterns, claimCheck{path: k, want: m.ClaimPatterns[k], re: re})
	}
	issNeverMatches(v, l, mp, c, is)
	return c
}

// issNeverMatches warns of a claims or claim_patterns entry on "iss" that
// no token of the match's issuer can pass: every token an issuer takes has
// iss equal to its issuer value (a trust domain's without iss is matched
// as having it), so any other iss leaves the entry matching nothing.
func issNeverMatches(v *validator, l loc, mp string, c *matcher, is *Issuer) {
	if is == nil || is.Issuer == "" {
		return
	}
	for _, cc := range c.claims {
		if cc.path == "iss" && cc.want != is.Issuer {
			v.warn(l.file, fmt.Sprintf("%s.claims[%q]", mp, "iss"), "never matches: every token of issuer %s has iss %s (the issuer value; the match's issuer already requires it)", quoted(is.Name), quoted(is.Issuer))
		}
	}
	for _, cc := range c.patterns {
		if cc.path == "iss" && cc.re != nil && !cc.re.MatchString(is.Issuer) {
			v.warn(l.file, fmt.Sprintf("%s.claim_patterns[%q]", mp, "iss"), "never matches: every token of issuer %s has iss %s (the issuer value; the match's issuer already requires it)", quoted(is.Name), quoted(is.Issuer))
		}
	}
}

// nullMatchFields refuses a claims or claim_patterns of the match of the
// entry at l written without a value ("claims:", a template that expanded
// to nothing): read as left out, it would drop every claim the match
// requires, and the match would take more tokens than meant, as an empty
// rate would take more requests. Leaving the field out (or "{}") says so.
func nullMatchFields(v *validator, l loc, root *yaml.Node) {
	for _, f := range []string{"claims", "claim_patterns"} {
		if p := l.path + ".match." + f; writtenNull(root, p) {
			v.add(l.file, p, "no value: write the claims to require, or remove the field")
		}
	}
}

// anchored compiles a policy regexp so that it must match the whole value.
// The pattern must compile on its own first: wrapped in ^(?:...)$ an
// unbalanced "a)|(?:b" would compile and escape the anchors.
func anchored(p string) (*regexp.Regexp, error) {
	if _, err := regexp.Compile(p); err != nil {
		return nil, err
	}
	re, err := regexp.Compile(`^(?:` + p + `)$`)
	// On its own p compiled, so the wrapping broke it: a \Q that quotes to
	// the end of p quoted the ")$" too ("missing closing )"). A \E outside
	// \Q is an error, so p+`\E` compiling proves that is what happened.
	if err != nil {
		if _, qerr := regexp.Compile(p + `\E`); qerr == nil {
			return nil, errUnterminatedQuote
		}
	}
	return re, err
}

var errUnterminatedQuote = errors.New(`\Q without a closing \E: end the quoted text with \E`)

// regexpReason is the regexp error of pattern p, without p itself when the
// error quotes all of it (the field path already names it); a fragment of
// the pattern is kept.
func regexpReason(err error, p string) string {
	var se *syntax.Error
	if !errors.As(err, &se) {
		return err.Error()
	}
	if se.Expr == p || se.Expr == `^(?:`+p+`)$` {
		return se.Code.String()
	}
	return se.Code.String() + ": `" + se.Expr + "`"
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// checkDisjoint reports workloads whose match blocks are identical: a token
// matching one matches the other, so Match would always be ambiguous. Each
// workload that has the same match (sameMatch) as an earlier one names the
// first of them. sameMatch is an equivalence, and matchKey is equal for
// two matches exactly when sameMatch holds, so the workloads are grouped
// by key in one pass instead of compared pairwise (25,000 workloads took
// seconds at every load and reload).
func checkDisjoint(v *validator, ws []Workload, locs []loc) {
	first := make(map[string]int, len(ws))
	var sb strings.Builder
	for i := range ws {
		sb.Reset()
		matchKey(&sb, &ws[i].Match)
		k := sb.String()
		j, ok := first[k]
		if !ok {
			first[k] = i
			continue
		}
		v.add(locs[i].file, locs[i].path+".match", "same match as workload %s (%s): a token would match both; make workload matches disjoint", quoted(ws[j].Name), locs[j])
	}
}

// matchKey writes the fields sameMatch compares, each string prefixed by
// its length (so none can run into the next), the claims and claim
// patterns sorted by key and preceded by their count (a nil map and an
// empty one write the same, as sameMatch holds them the same).
func matchKey(sb *strings.Builder, m *Match) {
	str := func(s string) {
		sb.WriteString(strconv.Itoa(len(s)))
		sb.WriteByte(':')
		sb.WriteString(s)
	}
	str(m.Issuer)
	str(m.Subject)
	str(m.SubjectPattern)
	for _, c := range []map[string]string{m.Claims, m.ClaimPatterns} {
		sb.WriteString(strconv.Itoa(len(c)))
		sb.WriteByte(';')
		for _, k := range sortedKeys(c) {
			str(k)
			str(c[k])
		}
	}
}

func sameMatch(a, b *Match) bool {
	return a.Issuer == b.Issuer && a.Subject == b.Subject && a.SubjectPattern == b.SubjectPattern &&
		len(a.Claims) == len(b.Claims) && len(a.ClaimPatterns) == len(b.ClaimPatterns) &&
		(len(a.Claims) == 0 || reflect.DeepEqual(a.Claims, b.Claims)) &&
		(len(a.ClaimPatterns) == 0 || reflect.DeepEqual(a.ClaimPatterns, b.ClaimPatterns))
}

// validateGrant validates g; isWritten says whether the field a path
// names is written in the file (proxy.methods and proxy.inject.format left
// out default; written empty, they are problems); isNull whether it is
// written without a value (num_uses: read as 0, unlimited).
func validateGrant(v *validator, l loc, g *Grant, isWritten, isNull func(path string) bool) {
	if g.TTL <= 0 {
		if g.TTL == 0 {
			v.add(l.file, l.path+".ttl", "required, must be > 0")
		} else {
			v.add(l.file, l.path+".ttl", "must be > 0")
		}
	} else if g.TTL < Duration(time.Second) {
		// The minters issue whole seconds and refuse less (ttl_too_short).
		v.add(l.file, l.path+".ttl", "%s is less than 1s: credentials are issued for whole seconds", g.TTL)
	} else if ttl := g.TTLDuration(); ttl%time.Second != 0 {
		// The minters would cut it to whole seconds while policy explain
		// and the grant's description print the fraction.
		down := ttl.Truncate(time.Second)
		v.add(l.file, l.path+".ttl", "%s is not whole seconds: credentials are issued for whole seconds (write %s or %s)", g.TTL, down, down+time.Second)
	} else {
		switch {
		case ttl > maxDuration:
			v.add(l.file, l.path+".ttl", "%s is over 10 years (%v): credentials are short-lived", g.TTL, maxDuration)
		case g.Kind == KindJWT && ttl > longJWTTTL:
			v.warn(l.file, l.path+".ttl", "%s is over 24h: a JWT cannot be revoked where it is verified (without introspection), and a transit key the policy stops naming stays in the JWKS this long (with the in-memory store, not across a restart)", g.TTL)
		case ttl > vaultMaxLeaseTTL && (g.Kind == KindVaultToken || g.Kind == KindVaultDynamic || g.Kind == KindPKI):
			v.warn(l.file, l.path+".ttl", "%s is over 768h, Vault's default max lease TTL (32 days): unless the mount's max is raised, Vault cuts the credential short", g.TTL)
		case ttl > vaultMaxLeaseTTL && g.Kind == KindProxy:
			v.warn(l.file, l.path+".ttl", "%s is over 768h (32 days): a credential that long-lived ends early only if revoked", g.TTL)
		}
	}
	blocks := []struct {
		kind string
		set  bool
	}{
		{KindVaultToken, g.VaultToken != nil},
		{KindJWT, g.JWT != nil},
		{KindVaultDynamic, g.VaultDynamic != nil},
		{KindProxy, g.Proxy != nil},
		{KindPKI, g.PKI != nil},
	}
	if !slices.Contains(kinds, g.Kind) {
		if g.Kind == "" {
			v.add(l.file, l.path+".kind", "required (one of %s)", strings.Join(kinds, ", "))
		} else {
			v.add(l.file, l.path+".kind", "unknown kind %s (want one of %s)", quoted(g.Kind), strings.Join(kinds, ", "))
		}
	} else {
		for _, b := range blocks {
			if b.kind == g.Kind && !b.set {
				v.add(l.file, l.path+"."+b.kind, "required for kind %s", g.Kind)
			}
		}
	}
	for _, b := range blocks {
		if b.set && b.kind != g.Kind {
			v.add(l.file, l.path+"."+b.kind, "must not be set for kind %s", quoted(g.Kind))
		}
	}
	if g.Kind == KindVaultToken && g.VaultToken != nil {
		vt := g.VaultToken
		bp := l.path + ".vault_token"
		if len(vt.Policies) == 0 {
			v.add(l.file, bp+".policies", "required: at least one Vault policy")
		}
		for i, pol := range vt.Policies {
			pp := fmt.Sprintf("%s.policies[%d]", bp, i)
			switch {
			case pol == "":
				v.add(l.file, pp, "must not be empty")
			case strings.EqualFold(strings.TrimSpace(pol), "root"):
				// Vault trims and lowercases policy names: " Root" is root.
				v.add(l.file, pp, "the root policy is never granted")
			case strings.TrimSpace(pol) != pol:
				v.add(l.file, pp, "%s starts or ends with a space: Vault trims policy names, so write it without", quoted(pol))
			}
		}
		switch {
		case vt.NumUses < 0:
			v.add(l.file, bp+".num_uses", "must be >= 0 (0 = unlimited)")
		case isNull(bp + ".num_uses"):
			// Read as 0, unlimited uses: say so in the file, not by
			// leaving the value out.
			v.add(l.file, bp+".num_uses", "no value: write a number of uses (0 = unlimited), or remove the field")
		}
	}
	if g.Kind == KindJWT && g.JWT != nil {
		switch a := g.JWT.Audience; {
		case a == "":
			v.add(l.file, l.path+".jwt.audience", "required")
		case strings.TrimSpace(a) != a:
			v.add(l.file, l.path+".jwt.audience", "%s starts or ends with a space: it is the minted JWT's aud, which its verifiers compare exactly", quoted(a))
		}
		switch k := g.JWT.TransitKey; {
		case k == "":
			v.add(l.file, l.path+".jwt.transit_key", "required")
		case !validTransitKey(k):
			v.add(l.file, l.path+".jwt.transit_key", `%s must be a transit key name (one path segment, no ":", "?", "#", "%%", "\" or spaces)`, quoted(k))
		}
	}
	if g.Kind == KindVaultDynamic && g.VaultDynamic != nil {
		checkVaultPath(v, l.file, l.path+".vault_dynamic.path", g.VaultDynamic.Path, strictPathRefuse, strictPathReason)
	}
	if g.Kind == KindPKI && g.PKI != nil {
		checkVaultPath(v, l.file, l.path+".pki.path", g.PKI.Path, strictPathRefuse, strictPathReason)
		if g.PKI.Path != "" && !pkiIssuePath(g.PKI.Path) {
			v.add(l.file, l.path+".pki.path", "must be an issue path: <mount>/issue/<role> or <mount>/issuer/<ref>/issue/<role>")
		}
		if td := g.PKI.TrustDomain; td != "" && !trustDomainRE.MatchString(td) {
			v.add(l.file, l.path+".pki.trust_domain", "must be a bare lowercase trust domain name like example.org ([a-z0-9._-])")
		}
	}
	if g.Kind == KindProxy && g.Proxy != nil {
		validateProxy(v, l.file, l.path+".proxy", g.Proxy, isWritten)
	}
}

// pkiIssuePath reports whether path is a PKI issue path:
// <mount...>/issue/<role> or <mount...>/issuer/<ref>/issue/<role> (a sign
// path needs a CSR the broker does not have). adapters/vault.PKIMount is
// the same rule where the path is used.
func pkiIssuePath(path string) bool {
	segs := strings.Split(path, "/")
	n := len(segs)
	if n < 3 || segs[n-2] != "issue" {
		return false
	}
	return !(n == 4 && segs[1] == "issuer") // "<mount>/issuer/issue/<role>" has no issuer ref
}

// CheckFiles checks the files the policy names (every ca_file: readable,
// holding a PEM certificate), each problem named by policy file and field.
// Parse and Load do not read them: a policy is often checked where they do
// not exist (a policy repository's CI). The server runs it at start and on
// every reload, `keytrail policy check --files` on request. A ca_file is
// read as a policy file is (ReadFile): a named pipe, a device or a
// directory is a problem naming it, not waited on or read without end.
// Each is read once, and the policy keeps what was read: CAFile hands those
// bytes to its users, so what a reload checked is what it uses.
//
// warnings judge the dates of each readable ca_file's certificates at now
// (CABundleDates), named like problems: one that expires within
// CAExpiryWarning, one expired or not yet valid, even when none of the
// bundle is valid. Never a problem: a problem stops the server at start
// and refuses a reload, and a ca_file with no valid certificate fails only
// the TLS connections it verifies (that issuer's JWKS, that upstream).
func (p *Policy) CheckFiles(now time.Time) (warnings []*Problem, err error) {
	var v validator
	// Each file is read once, however many entries name it, and what was
	// read is what the policy's users get (CAFile).
	reads := map[string]caRead{}
	read := func(caFile string) ([]byte, error) {
		r, ok := reads[caFile]
		if !ok {
			r.data, r.err = ReadFile(caFile)
			reads[caFile] = r
		}
		return r.data, r.err
	}
	for i := range p.issuers {
		l := p.issuerLocs[i]
		checkCAFile(&v, l.file, l.path+".ca_file", p.issuers[i].CAFile, now, read)
	}
	for i := range p.grants {
		if g := &p.grants[i]; g.Kind == KindProxy && g.Proxy != nil {
			l := p.grantLocs[i]
			checkCAFile(&v, l.file, l.path+".proxy.ca_file", g.Proxy.CAFile, now, read)
		}
	}
	p.caMu.Lock()
	p.caReads = reads
	p.caMu.Unlock()
	for _, e := range v.warnings {
		w := e.(*Problem)
		w.Line = p.caLines[w.File+": "+w.Path]
		warnings = append(warnings, w)
	}
	if len(v.problems) > 0 {
		for _, e := range v.problems {
			if pr, ok := e.(*Problem); ok {
				pr.Line = p.caLines[pr.File+": "+pr.Path]
			}
		}
		return warnings, &ValidationError{Problems: v.problems}
	}
	return warnings, nil
}

// fileRoots looks up the document of a parsed file by name.
func fileRoots(files []parsedFile) func(string) *yaml.Node {
	return func(name string) *yaml.Node {
		for i := range files {
			if files[i].name == name {
				return files[i].root
			}
		}
		return nil
	}
}

// checkCAFile checks that a ca_file, when set, is readable and holds at
// least one PEM certificate, and warns of the dates of its certificates
// at now (CABundleDates). read reads it (ReadFile, once per file). The
// path is named as it is when printable, else quoted (Printable).
func checkCAFile(v *validator, file, path, caFile string, now time.Time, read func(string) ([]byte, error)) {
	if caFile == "" {
		return
	}
	pem, err := read(caFile)
	if err != nil {
		// An open error names the path ("cannot read PATH: no such file
		// or directory"); the refusal of a named pipe, a device or a
		// directory, and the cap, already do.
		var pe *fs.PathError
		if errors.As(err, &pe) {
			v.add(file, path, "cannot read %s: %v", Printable(caFile), pe.Err)
		} else {
			v.add(file, path, "cannot read %v", err)
		}
		return
	}
	if !x509.NewCertPool().AppendCertsFromPEM(pem) {
		v.add(file, path, "%s holds no PEM certificate", Printable(caFile))
		return
	}
	unusable, warnings := CABundleDates(caFile, pem, now)
	for _, m := range append(unusable, warnings...) {
		v.warn(file, path, "%s", m)
	}
}

// The characters a Vault API path may not hold: what the adapters refuse
// where the path is used (adapters/vault validName for vault_dynamic and
// pki paths, KVSecrets for vault_kv), so that a path every mint would fail
// on is a problem of the policy file, not a vault_config error at each
// exchange.
const (
	strictPathRefuse = "?#%\\ "
	strictPathReason = `must not contain "?", "#", "%", "\" or spaces`
	kvPathRefuse     = "?#"
	kvPathReason     = `must not contain "?" or "#"`
)

// checkVaultPath checks a Vault API path relative to /v1/; refuse lists
// characters it may not contain, reason says so.
func checkVaultPath(v *validator, file, p, val, refuse, reason string) {
	switch {
	case val == "":
		v.add(file, p, "required")
	case strings.HasPrefix(val, "/"):
		v.add(file, p, "must not start with \"/\" (it is relative to /v1/)")
	case slices.ContainsFunc(strings.Split(val, "/"), func(s string) bool { return s == "" || s == "." || s == ".." }):
		v.add(file, p, "must not contain empty, \".\" or \"..\" segments")
	case strings.ContainsAny(val, refuse):
		v.add(file, p, "%s", reason)
	}
}

// validTransitKey reports whether k can name a transit key in a Vault path
// (<mount>/keys/<k>, <mount>/sign/<k>) and in a kid ("<k>:<version>"): one
// path segment, the rule audit.checkpoint_transit_key follows too.
func validTransitKey(k string) bool {
	return k != "." && k != ".." && !strings.ContainsAny(k, "/: \t?#%\\")
}

func validateProxy(v *validator, file, bp string, px *ProxyGrant, isWritten func(path string) bool) {
	switch {
	case len(px.Methods) > 0:
	case isWritten(bp + ".methods"):
		// "methods: []" is no method, not the default.
		v.add(file, bp+".methods", "required: at least one method (omit it for the default, [GET])")
	default:
		px.Methods = []string{"GET"}
	}
	// A written "format: """ is not the default either (checked below).
	formatWritten := px.Inject.Format == "" && isWritten(bp+".inject.format")
	if px.Inject.Header != "" && px.Inject.Format == "" && !formatWritten {
		px.Inject.Format = DefaultInjectFormat
	}

	if px.Upstream == "" {
		v.add(file, bp+".upstream", "required")
	} else if u, err := url.Parse(px.Upstream); err != nil || !u.IsAbs() || u.Host == "" || u.Opaque != "" {
		v.add(file, bp+".upstream", "must be an absolute https URL")
	} else {
		switch {
		case u.User != nil:
			v.add(file, bp+".upstream", "must not carry user info")
		case u.RawQuery != "" || u.ForceQuery:
			v.add(file, bp+".upstream", "must not have a query")
		case u.Fragment != "" || strings.Contains(px.Upstream, "#"):
			v.add(file, bp+".upstream", "must not have a fragment")
		case u.Scheme == "https":
		case u.Scheme == "http" && px.AllowPrivate && IsLoopbackHost(u.Hostname()):
		case u.Scheme == "http" && IsLoopbackHost(u.Hostname()):
			v.add(file, bp+".upstream", "must be https (http to a loopback host needs allow_private: true)")
		default:
			v.add(file, bp+".upstream", "must be https")
		}
	}
	if px.Secret.VaultKV == "" {
		v.add(file, bp+".secret.vault_kv", "required")
	} else {
		checkVaultPath(v, file, bp+".secret.vault_kv", px.Secret.VaultKV, kvPathRefuse, kvPathReason)
	}
	if px.Secret.Field == "" {
		v.add(file, bp+".secret.field", "required")
	}

	in := px.Inject
	switch {
	case in.Header != "" && in.Query != "":
		v.add(file, bp+".inject", "set exactly one of header and query, not both")
	case in.Header == "" && in.Query == "":
		v.add(file, bp+".inject", "required: one of header or query")
	case in.Header != "":
		switch {
		case !headerTokenRE.MatchString(in.Header):
			v.add(file, bp+".inject.header", "%s is not a valid header name", quoted(in.Header))
		case slices.ContainsFunc(forbiddenHeaders, func(h string) bool { return strings.EqualFold(h, in.Header) }):
			v.add(file, bp+".inject.header", "%s cannot carry a secret", quoted(in.Header))
		}
		if formatWritten {
			v.add(file, bp+".inject.format", "must contain %s (omit it for the default, %s)", SecretPlaceholder, quoted(DefaultInjectFormat))
		} else if !strings.Contains(in.Format, SecretPlaceholder) {
			v.add(file, bp+".inject.format", "must contain %s", SecretPlaceholder)
		} else if strings.ContainsFunc(in.Format, func(r rune) bool { return (r < 0x20 && r != '\t') || r == 0x7f }) {
			// net/http refuses such a header value: every request would
			// fail after its use event.
			v.add(file, bp+".inject.format", "must not contain control characters (other than a tab)")
		}
	case in.Query != "":
		if in.Format != "" {
			v.add(file, bp+".inject.format", "applies to header injection only")
		}
		if strings.ContainsAny(in.Query, "&=#?% \t\r\n") {
			v.add(file, bp+".inject.query", "%s is not a plain query parameter name", quoted(in.Query))
		}
	}

	for i, m := range px.Methods {
		mp := fmt.Sprintf("%s.methods[%d]", bp, i)
		switch {
		case slices.Contains(proxyMethods, m):
		case m == "TRACE" || m == "CONNECT":
			v.add(file, mp, "%s is not allowed: it would expose the injected secret or tunnel past the proxy", m)
		default:
			v.add(file, mp, "%s is not an uppercase HTTP method (want one of %s)", quoted(m), strings.Join(proxyMethods, ", "))
		}
	}
	if len(px.Paths) == 0 {
		v.add(file, bp+".paths", "required: at least one path")
	}
	for i, p := range px.Paths {
		if msg := checkPathPattern(p); msg != "" {
			v.add(file, fmt.Sprintf("%s.paths[%d]", bp, i), "%s %s", quoted(p), msg)
		}
	}
}

// checkPathPattern returns why p is not a valid proxy path pattern, or "".
func checkPathPattern(p string) string {
	if !strings.HasPrefix(p, "/") {
		return "must start with \"/\""
	}
	body := strings.TrimSuffix(p, "/*")
	if body != p {
		body += "/"
	}
	if strings.Contains(body, "*") {
		return "may use a wildcard only as a final \"/*\""
	}
	if strings.ContainsAny(body, "?#%\\ \t\r\n") {
		return "must be a plain path (no query, fragment, escapes or spaces)"
	}
	if !cleanPath(body) {
		return "must be a clean path (no \"//\", \".\" or \"..\" segments)"
	}
	return ""
}

// cleanPath reports whether p (starting with "/") has no empty (except a
// trailing one), "." or ".." segments.
func cleanPath(p string) bool {
	// Segment by segment without strings.Split: AllowsPath asks on every
	// proxied request.
	for rest, more := p[1:], true; more; {
		var s string
		s, rest, more = strings.Cut(rest, "/")
		if s == "." || s == ".." || (s == "" && more) {
			return false
		}
	}
	return true
}

// joinProblems is errors.Join; kept as a function so callers see one shape.
func joinProblems(problems []error) error {
	return &ValidationError{Problems: problems}
}

// ValidationError lists every problem found in a policy. Unwrap returns the
// problems (each a *Problem), so errors.As finds them.
type ValidationError struct {
	Problems []error
}

func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString("policy invalid: ")
	b.WriteString(strconv.Itoa(len(e.Problems)))
	if len(e.Problems) == 1 {
		b.WriteString(" problem")
	} else {
		b.WriteString(" problems")
	}
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.Error())
	}
	return b.String()
}

// Unwrap returns the individual problems.
func (e *ValidationError) Unwrap() []error { return e.Problems }
