package policies

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Match outcomes. Both mean "deny"; callers map them to their own category.
var (
	// ErrNoMatch: no workload of the issuer matches the identity.
	ErrNoMatch = errors.New("no workload matches the identity")
	// ErrAmbiguous: more than one workload matches; policy authors must make
	// workload matches disjoint.
	ErrAmbiguous = errors.New("identity matches more than one workload")
)

// claimCheck is one compiled claims or claim_patterns entry.
type claimCheck struct {
	path string
	want string         // exact value, or the pattern source
	re   *regexp.Regexp // nil for exact values
}

// matcher is a compiled Match.
type matcher struct {
	issuer         string
	subject        string
	hasSubject     bool
	subjectPattern string
	subjectRE      *regexp.Regexp
	claims         []claimCheck // sorted by path
	patterns       []claimCheck // sorted by path
	// absentIss is the value a claims or claim_patterns entry on "iss"
	// sees in a token without iss: the issuer's trust domain id when the
	// issuer is a SPIFFE trust domain (which takes JWT-SVIDs without iss,
	// and whose identities' iss is that id), else "" (no token without
	// iss reaches any other issuer).
	absentIss string
}

// Check is one step of a match evaluation, for explanations.
type Check struct {
	OK   bool   `json:"ok"`
	Text string `json:"text"`
}

// eval reports whether the matcher accepts sub and claims. With explain it
// evaluates every condition and describes each; without, it stops at the
// first failure and allocates nothing for descriptions.
func (m *matcher) eval(claims map[string]any, explain bool) (bool, []Check) {
	ok := true
	var checks []Check
	// note records one condition's result; with explain it describes it.
	// Its description's arguments are made only with explain (the callers
	// test it first): boxed into note's ...any they would be allocated on
	// every exchange's match.
	note := func(pass bool) bool {
		if !pass {
			ok = false
		}
		return pass || explain
	}
	describe := func(pass bool, format string, args ...any) {
		checks = append(checks, Check{OK: pass, Text: fmt.Sprintf(format, args...)})
	}
	sub, hasSub := claims["sub"].(string)
	switch {
	case m.hasSubject && !hasSub:
		if explain {
			describe(false, "claim sub missing (want %q)", m.subject)
		}
		if !note(false) {
			return false, nil
		}
	case m.hasSubject:
		pass := sub == m.subject
		if explain {
			if pass {
				describe(true, "subject %q == %q", sub, m.subject)
			} else {
				describe(false, "subject %q != %q", sub, m.subject)
			}
		}
		if !note(pass) {
			return false, nil
		}
	case m.subjectRE != nil && !hasSub:
		if explain {
			describe(false, "claim sub missing (want pattern %q)", m.subjectPattern)
		}
		if !note(false) {
			return false, nil
		}
	case m.subjectRE != nil:
		pass := m.subjectRE.MatchString(sub)
		if explain {
			if pass {
				describe(true, "subject %q matches pattern %q", sub, m.subjectPattern)
			} else {
				describe(false, "subject %q does not match pattern %q", sub, m.subjectPattern)
			}
		}
		if !note(pass) {
			return false, nil
		}
	}
	for _, c := range m.claims {
		pass, why := claimMatches(claims, c, m.absentIss, explain)
		if explain {
			describe(pass, "%s", why)
		}
		if !note(pass) {
			return false, nil
		}
	}
	for _, c := range m.patterns {
		pass, why := claimMatches(claims, c, m.absentIss, explain)
		if explain {
			describe(pass, "%s", why)
		}
		if !note(pass) {
			return false, nil
		}
	}
	return ok, checks
}

// claimMatches checks one claim condition. A scalar claim (string, number,
// bool) is compared in its ClaimString form; an array claim matches when any
// of its scalar elements does. Objects and null never match. A token
// without iss is checked on "iss" as one whose iss is absentIss, when set.
func claimMatches(claims map[string]any, c claimCheck, absentIss string, explain bool) (bool, string) {
	test := func(s string) bool {
		if c.re != nil {
			return c.re.MatchString(s)
		}
		return s == c.want
	}
	what := func(got string, pass bool) string {
		if !explain {
			return ""
		}
		switch {
		case c.re != nil && pass:
			return fmt.Sprintf("claim %s %s matches pattern %q", c.path, got, c.want)
		case c.re != nil:
			return fmt.Sprintf("claim %s %s does not match pattern %q", c.path, got, c.want)
		case pass:
			return fmt.Sprintf("claim %s %s == %q", c.path, got, c.want)
		default:
			return fmt.Sprintf("claim %s %s != %q", c.path, got, c.want)
		}
	}
	v, ok := ClaimValue(claims, c.path)
	stoodIn := ""
	if !ok && absentIss != "" && c.path == "iss" {
		v, ok = absentIss, true
		if explain {
			stoodIn = " (no iss claim: the trust domain id, the identity's iss)"
		}
	}
	if !ok {
		if !explain {
			return false, ""
		}
		return false, fmt.Sprintf("claim %s missing", c.path)
	}
	if arr, isArr := v.([]any); isArr {
		var elems []string
		pass := false
		for _, e := range arr {
			s, ok := scalarString(e)
			if !ok {
				continue
			}
			if test(s) {
				pass = true
				if !explain {
					break
				}
			}
			if explain {
				elems = append(elems, strconv.Quote(s))
			}
		}
		if !explain {
			return pass, ""
		}
		got := "[" + strings.Join(elems, ", ") + "]"
		if c.re == nil && !pass {
			return false, fmt.Sprintf("claim %s %s has no element %q", c.path, got, c.want)
		}
		if c.re != nil && !pass {
			return false, fmt.Sprintf("claim %s %s has no element matching pattern %q", c.path, got, c.want)
		}
		return true, what(got, true)
	}
	s, ok := scalarString(v)
	if !ok {
		if !explain {
			return false, ""
		}
		return false, fmt.Sprintf("claim %s is not a string, number, bool or array", c.path)
	}
	pass := test(s)
	if !explain {
		return pass, "" // no quoted copy of the value: every exchange's match comes here
	}
	return pass, what(strconv.Quote(s)+stoodIn, pass)
}

// Match returns the one workload of issuer issuerName that the identity's
// claims (including "sub") match. See the package documentation for the
// rules. No match is an error wrapping ErrNoMatch, more than one an error
// wrapping ErrAmbiguous; neither error carries claim values other than sub.
func (p *Policy) Match(issuerName string, claims map[string]any) (*Workload, error) {
	i, err := p.MatchIndex(issuerName, claims)
	if err != nil {
		return nil, err
	}
	w := cloneWorkload(&p.workloads[i])
	return &w, nil
}

// MatchIndex is Match without the copy of the workload: it returns the
// workload's index in Workloads' order (declaration order), or -1 and
// Match's error. A caller that keeps its own copy of Workloads (one per
// policy) reads the match from it without copying on every call.
func (p *Policy) MatchIndex(issuerName string, claims map[string]any) (int, error) {
	found := -1
	var more []int // the matches after the first: an error (built only then)
	candidates := 0
	for i, m := range p.workloadMatch {
		if m.issuer != issuerName {
			continue
		}
		candidates++
		if ok, _ := m.eval(claims, false); !ok {
			continue
		}
		if found < 0 {
			found = i
		} else {
			more = append(more, i)
		}
	}
	switch {
	case len(more) > 0:
		names := []string{strconv.Quote(p.workloads[found].Name)}
		for _, i := range more {
			names = append(names, strconv.Quote(p.workloads[i].Name))
		}
		return -1, fmt.Errorf("%w: issuer %q, %s: workloads %s; policy workload matches must be disjoint",
			ErrAmbiguous, issuerName, subDesc(claims), strings.Join(names, ", "))
	case found < 0:
		return -1, fmt.Errorf("%w: issuer %q, %s (%d workloads of this issuer checked)",
			ErrNoMatch, issuerName, subDesc(claims), candidates)
	}
	return found, nil
}

func subDesc(claims map[string]any) string {
	if sub, ok := claims["sub"].(string); ok {
		return fmt.Sprintf("sub %q", sub)
	}
	return "no sub claim"
}

// MatchAdmin returns the first admin, in declaration order, whose match
// accepts the identity and that holds role. An identity may be listed under
// several admins (a team entry and an on-call entry, say): it holds the role
// when any of them grants it, whatever their order. When none of the matching
// admins holds role (or role is ""), MatchAdmin returns the first that
// matches, so the caller can name it; ok is false only when none matches.
func (p *Policy) MatchAdmin(issuerName string, claims map[string]any, role string) (*Admin, bool) {
	first := -1
	for i, m := range p.adminMatch {
		if m.issuer != issuerName {
			continue
		}
		if ok, _ := m.eval(claims, false); !ok {
			continue
		}
		if first < 0 {
			first = i
		}
		if role != "" && p.admins[i].HasRole(role) {
			first = i
			break
		}
	}
	if first < 0 {
		return nil, false
	}
	a := cloneAdmin(&p.admins[first])
	return &a, true
}

// HasRole reports whether the admin holds role. A nil admin holds none.
func (a *Admin) HasRole(role string) bool {
	if a == nil {
		return false
	}
	for _, r := range a.Roles {
		if r == role {
			return true
		}
	}
	return false
}

// maxClaimLookups bounds the backtracking of ClaimValue over adversarial
// claims (keys that are dotted prefixes of each other at every level).
const maxClaimLookups = 1024

// ClaimValue looks up a dotted path in claims. Keys may themselves contain
// dots (Kubernetes tokens have a top-level "kubernetes.io" key), so at each
// level the whole remaining path is tried as a key first, then every
// '.'-separated prefix that names a nested object, longest first, continuing
// with the rest of the path inside it.
//
// Example: "kubernetes.io.pod.uid" resolves claims["kubernetes.io"]["pod"]["uid"].
func ClaimValue(claims map[string]any, path string) (any, bool) {
	if path == "" || claims == nil {
		return nil, false
	}
	budget := maxClaimLookups
	return claimLookup(claims, path, &budget)
}

func claimLookup(m map[string]any, path string, budget *int) (any, bool) {
	*budget--
	if *budget < 0 {
		return nil, false
	}
	if v, ok := m[path]; ok {
		return v, true
	}
	for i := strings.LastIndexByte(path, '.'); i > 0; i = strings.LastIndexByte(path[:i], '.') {
		child, ok := m[path[:i]].(map[string]any)
		if !ok {
			continue
		}
		if v, ok := claimLookup(child, path[i+1:], budget); ok {
			return v, true
		}
		if *budget < 0 {
			return nil, false
		}
	}
	return nil, false
}

// SessionClaims returns the claim paths of SessionClaim: one, or several
// joined by "+" (spaces around a "+" are ignored). Nil when unset.
func (is *Issuer) SessionClaims() []string {
	if is.SessionClaim == "" {
		return nil
	}
	parts := strings.Split(is.SessionClaim, "+")
	for i, p := range parts {
		parts[i] = strings.TrimSpace(p)
	}
	return parts
}

// ClaimString looks up path (see ClaimValue) and renders a scalar claim as a
// string: strings as they are, numbers in their shortest decimal form (an
// integral float64 has no ".0"), bools as "true"/"false". Arrays, objects
// and null are not scalars and report false.
func ClaimString(claims map[string]any, path string) (string, bool) {
	v, ok := ClaimValue(claims, path)
	if !ok {
		return "", false
	}
	return scalarString(v)
}

func scalarString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case bool:
		return strconv.FormatBool(x), true
	case json.Number:
		// As written in the token: an integer is kept exact however long;
		// any other spelling ("3.0", "1e3") in the float64 form below.
		s := x.String()
		if isDecimalInteger(s) {
			return s, true
		}
		f, err := x.Float64()
		if err != nil {
			return s, true // out of float64 range: as written
		}
		return scalarString(f)
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return "", false
		}
		return strconv.FormatFloat(x, 'f', -1, 64), true
	case float32:
		return scalarString(float64(x))
	case int:
		return strconv.Itoa(x), true
	case int64:
		return strconv.FormatInt(x, 10), true
	case int32:
		return strconv.FormatInt(int64(x), 10), true
	case uint64:
		return strconv.FormatUint(x, 10), true
	case uint32:
		return strconv.FormatUint(uint64(x), 10), true
	case uint:
		return strconv.FormatUint(uint64(x), 10), true
	}
	return "", false
}

// isDecimalInteger reports whether s is an optional '-' followed by digits
// only.
func isDecimalInteger(s string) bool {
	s = strings.TrimPrefix(s, "-")
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// NoTokenType is the token_types entry that admits tokens without a typ
// header (a JWT-SVID, a Kubernetes service-account token).
const NoTokenType = ""

// TokenTypeKey returns the form a typ header value and a token_types entry
// are compared in: ASCII lower case (media types are case-insensitive, and
// ASCII: a Kelvin sign does not fold to "k" here), with "application/"
// prepended when the value holds no "/" (RFC 7515 §4.1.9). "JWT", "jwt"
// and "application/JWT" all give "application/jwt". A value with nothing
// after its "/" ("application/", which "" would give) matches no valid
// entry.
func TokenTypeKey(typ string) string {
	b := []byte(typ)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
	t := string(b)
	if !strings.Contains(t, "/") {
		t = "application/" + t
	}
	return t
}

// Outcomes of CheckTypHeader: a token of the issuer is refused with one of
// them (broker/authn: malformed and bad_token_type).
var (
	// ErrTypNotString: the typ header is present and not a JSON string
	// (a number, null, a list): RFC 7515 §4.1.9 makes it a string.
	ErrTypNotString = errors.New("typ header is not a string")
	// ErrTypNotAccepted: the typ header, or its absence, is not one the
	// issuer's token_types admit.
	ErrTypNotAccepted = errors.New("typ header is not in the issuer's token_types")
)

// CheckTypHeader is the issuer's token_types rule, the one broker/authn
// enforces and policy explain --unverified applies (present false: the
// token has no typ header; typ: its value, as JSON decodes it). Absent
// token_types admit any typ header, of any JSON type, or none; otherwise a
// typ that is not a string is ErrTypNotString, and one AcceptsTokenType
// does not admit is ErrTypNotAccepted.
func (is *Issuer) CheckTypHeader(present bool, typ any) error {
	if is.TokenTypes == nil {
		return nil
	}
	s, isString := typ.(string)
	if present && !isString {
		return ErrTypNotString
	}
	if !is.AcceptsTokenType(present, s) {
		return ErrTypNotAccepted
	}
	return nil
}

// AcceptsTokenType reports whether the issuer's token_types admit a token
// whose typ header is typ (present false: the token has no typ header), as
// broker/authn decides it (through CheckTypHeader, which also refuses a
// typ that is not a JSON string): absent token_types admit any typ or
// none; "" (NoTokenType) admits a token without typ; a typ of "" matches
// nothing; other values are compared as TokenTypeKey gives them.
func (is *Issuer) AcceptsTokenType(present bool, typ string) bool {
	if is.TokenTypes == nil {
		return true
	}
	if !present {
		return slices.Contains(is.TokenTypes, NoTokenType)
	}
	if typ == "" {
		return false
	}
	for _, t := range is.TokenTypes {
		if t != NoTokenType && sameTokenType(t, typ) {
			return true
		}
	}
	return false
}

// sameTokenType reports whether TokenTypeKey(a) == TokenTypeKey(b),
// without building either (the check runs on every token, cache hits
// included).
func sameTokenType(a, b string) bool {
	const app = "application/"
	pa, pb := "", ""
	if !strings.Contains(a, "/") {
		pa = app
	}
	if !strings.Contains(b, "/") {
		pb = app
	}
	n := len(pa) + len(a)
	if n != len(pb)+len(b) {
		return false
	}
	at := func(p, s string, i int) byte {
		var c byte
		if i < len(p) {
			c = p[i]
		} else {
			c = s[i-len(p)]
		}
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		return c
	}
	for i := range n {
		if at(pa, a, i) != at(pb, b, i) {
			return false
		}
	}
	return true
}
