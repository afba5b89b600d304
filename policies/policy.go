package policies

import (
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"path/filepath"
	"slices"
	"sort"
	"sync"
)

// Policy is a validated, compiled policy. It is immutable: every accessor
// returns a copy, so a caller cannot change what the next caller sees. It is
// safe for concurrent use; a reload builds a new Policy and swaps a pointer.
type Policy struct {
	hash    string
	sources []Source

	issuers   []Issuer
	issuerIdx map[string]int // name -> index
	issByIss  map[string]int // iss -> index

	workloads     []Workload
	workloadIdx   map[string]int
	workloadMatch []*matcher        // parallel to workloads
	allowed       []map[string]bool // parallel to workloads
	workloadSrc   []string          // parallel to workloads: "file: workloads[i], line n"

	grants   []Grant
	grantIdx map[string]int

	admins     []Admin
	adminMatch []*matcher // parallel to admins

	exceptions []Exception

	issuerLocs, grantLocs []loc          // where each was declared (CheckFiles)
	caLines               map[string]int // "file: path" of each ca_file -> its line (CheckFiles)

	// caMu guards caReads: what was read of each ca_file the policy names,
	// by path (CheckFiles, CAFile), so that the bytes a reload checked are
	// the bytes its verifier and proxy use, each file read once.
	caMu    sync.Mutex
	caReads map[string]caRead

	warnings []*Problem // see Warnings
}

// Warnings lists what in the policy is valid but likely not meant (an
// unquoted claims value such as 1.0 that no number claim equals), each
// named by file, field path and line like a problem. keytrail policy check
// prints them; the server logs them at every load.
func (p *Policy) Warnings() []*Problem {
	out := make([]*Problem, len(p.warnings))
	for i, w := range p.warnings {
		c := *w
		out[i] = &c
	}
	return out
}

// finish computes the hash and sources of a compiled policy.
//
// The hash is hex SHA-256 over, for each file in name order, its base name,
// a NUL byte and the SHA-256 of its bytes: it identifies the policy content
// independently of the directory it was loaded from.
func (p *Policy) finish(files []parsedFile) {
	type hashed struct {
		base string
		sum  [sha256.Size]byte
	}
	hs := make([]hashed, 0, len(files))
	for _, f := range files {
		sum := sha256.Sum256(f.data)
		p.sources = append(p.sources, Source{Path: f.name, SHA256: hex.EncodeToString(sum[:])})
		hs = append(hs, hashed{base: filepath.Base(f.name), sum: sum})
	}
	sort.Slice(hs, func(i, j int) bool { return hs[i].base < hs[j].base })
	h := sha256.New()
	for _, x := range hs {
		h.Write([]byte(x.base))
		h.Write([]byte{0})
		h.Write(x.sum[:])
	}
	p.hash = hex.EncodeToString(h.Sum(nil))
}

// Hash identifies the policy content (see Sources for the files).
func (p *Policy) Hash() string { return p.hash }

// Sources lists the files the policy was built from, sorted by path.
func (p *Policy) Sources() []Source { return slices.Clone(p.sources) }

// Issuers lists the declared issuers in declaration order.
func (p *Policy) Issuers() []Issuer {
	out := make([]Issuer, len(p.issuers))
	for i := range p.issuers {
		out[i] = cloneIssuer(&p.issuers[i])
	}
	return out
}

// Trusts reports whether the policy names, under issuerName, the issuer
// whose tokens carry iss. An identity verified by another policy's
// authenticator (a reload between the two reads) may carry a name this
// policy gives to another issuer.
func (p *Policy) Trusts(issuerName, iss string) bool {
	i, ok := p.issuerIdx[issuerName]
	return ok && p.issuers[i].Issuer == iss
}

// Issuer returns the issuer with the given policy name.
func (p *Policy) Issuer(name string) (*Issuer, bool) {
	i, ok := p.issuerIdx[name]
	if !ok {
		return nil, false
	}
	is := cloneIssuer(&p.issuers[i])
	return &is, true
}

// SessionClaim returns the session_claim of the issuer with that policy
// name ("" when it has none or there is no such issuer), without copying
// the issuer as Issuer does: every exchange asks.
func (p *Policy) SessionClaim(issuerName string) string {
	i, ok := p.issuerIdx[issuerName]
	if !ok {
		return ""
	}
	return p.issuers[i].SessionClaim
}

// IssuerByIss returns the issuer whose issuer URL is exactly iss.
func (p *Policy) IssuerByIss(iss string) (*Issuer, bool) {
	i, ok := p.issByIss[iss]
	if !ok {
		return nil, false
	}
	is := cloneIssuer(&p.issuers[i])
	return &is, true
}

// IssuerByTrustDomain returns the issuer whose issuer is the SPIFFE
// trust-domain id spiffe://<td> (td a trust domain name), which a token
// without iss whose sub is a SPIFFE ID in td is routed to.
func (p *Policy) IssuerByTrustDomain(td string) (*Issuer, bool) {
	return p.IssuerByIss(spiffeScheme + td)
}

// Workloads lists the declared workloads in declaration order.
func (p *Policy) Workloads() []Workload {
	out := make([]Workload, len(p.workloads))
	for i := range p.workloads {
		out[i] = cloneWorkload(&p.workloads[i])
	}
	return out
}

// Workload returns the workload with the given name.
func (p *Policy) Workload(name string) (*Workload, bool) {
	i, ok := p.workloadIdx[name]
	if !ok {
		return nil, false
	}
	w := cloneWorkload(&p.workloads[i])
	return &w, true
}

// Grants lists the declared grants in declaration order.
func (p *Policy) Grants() []Grant {
	out := make([]Grant, len(p.grants))
	for i := range p.grants {
		out[i] = cloneGrant(&p.grants[i])
	}
	return out
}

// HasGrant reports whether the policy declares a grant of that name
// (without copying it, as Grant does).
func (p *Policy) HasGrant(name string) bool {
	_, ok := p.grantIdx[name]
	return ok
}

// Grant returns the grant with the given name.
func (p *Policy) Grant(name string) (*Grant, bool) {
	i, ok := p.grantIdx[name]
	if !ok {
		return nil, false
	}
	g := cloneGrant(&p.grants[i])
	return &g, true
}

// Admins lists the declared admins in declaration order.
func (p *Policy) Admins() []Admin {
	out := make([]Admin, len(p.admins))
	for i := range p.admins {
		out[i] = cloneAdmin(&p.admins[i])
	}
	return out
}

// Exceptions lists the declared exceptions in declaration order.
func (p *Policy) Exceptions() []Exception { return slices.Clone(p.exceptions) }

// Allowed reports whether workload w (looked up by name in this policy, so a
// modified copy cannot widen it) may ask for grant.
func (p *Policy) Allowed(w *Workload, grant string) bool {
	if w == nil {
		return false
	}
	i, ok := p.workloadIdx[w.Name]
	if !ok {
		return false
	}
	if _, ok := p.grantIdx[grant]; !ok {
		return false
	}
	return p.allowed[i][grant]
}

func cloneMatch(m Match) Match {
	m.Claims = maps.Clone(m.Claims)
	m.ClaimPatterns = maps.Clone(m.ClaimPatterns)
	return m
}

func cloneIssuer(is *Issuer) Issuer {
	c := *is
	c.Audiences = slices.Clone(is.Audiences)
	c.Algorithms = slices.Clone(is.Algorithms)
	c.TokenTypes = slices.Clone(is.TokenTypes) // nil (absent: any typ) stays nil
	return c
}

func cloneWorkload(w *Workload) Workload {
	c := *w
	c.Match = cloneMatch(w.Match)
	c.Grants = slices.Clone(w.Grants)
	if w.Rate != nil {
		r := *w.Rate
		c.Rate = &r
	}
	if w.ProxyRate != nil {
		r := *w.ProxyRate
		c.ProxyRate = &r
	}
	return c
}

func cloneAdmin(a *Admin) Admin {
	c := *a
	c.Match = cloneMatch(a.Match)
	c.Roles = slices.Clone(a.Roles)
	return c
}

func cloneGrant(g *Grant) Grant {
	c := *g
	if g.VaultToken != nil {
		vt := *g.VaultToken
		vt.Policies = slices.Clone(vt.Policies)
		c.VaultToken = &vt
	}
	if g.JWT != nil {
		j := *g.JWT
		c.JWT = &j
	}
	if g.VaultDynamic != nil {
		d := *g.VaultDynamic
		c.VaultDynamic = &d
	}
	if g.PKI != nil {
		k := *g.PKI
		c.PKI = &k
	}
	if g.Proxy != nil {
		px := *g.Proxy
		px.Methods = slices.Clone(px.Methods)
		px.Paths = slices.Clone(px.Paths)
		c.Proxy = &px
	}
	return c
}

// readCAFile reads a ca_file for CAFile: ReadFile, a seam for tests.
var readCAFile = ReadFile

// caRead is what one read of a ca_file gave.
type caRead struct {
	data []byte
	err  error
}

// CAFile returns the bytes of caFile, a ca_file the policy names (an
// issuer's or a proxy grant's), as this policy read them: those CheckFiles
// read and checked, or, for a file it did not read (CheckFiles not run),
// those read now with ReadFile. Either way the outcome, bytes or error, is
// kept for the policy's life, so each ca_file's bytes are those of one
// read per policy (per reload; first uses at once each read it, outside
// the policy's lock, and the outcome stored first is kept) and its users
// (the identity-token verifier, the proxy's upstream transports) all use
// the bytes CheckFiles accepted, even if the file changed since; a reload
// reads it again. The bytes are a
// copy. A path the policy does not name is read and not kept.
func (p *Policy) CAFile(caFile string) ([]byte, error) {
	if !p.namesCAFile(caFile) {
		return ReadFile(caFile)
	}
	p.caMu.Lock()
	r, ok := p.caReads[caFile]
	p.caMu.Unlock()
	if !ok {
		// Read outside the lock: a read that hangs (a stalled network
		// file system) holds up the users of this file only. Of reads
		// that ran at once, the outcome stored first is kept.
		var read caRead
		read.data, read.err = readCAFile(caFile)
		p.caMu.Lock()
		if r, ok = p.caReads[caFile]; !ok {
			if p.caReads == nil {
				p.caReads = map[string]caRead{}
			}
			r = read
			p.caReads[caFile] = r
		}
		p.caMu.Unlock()
	}
	if r.err != nil {
		return nil, r.err
	}
	return slices.Clone(r.data), nil
}

// namesCAFile reports whether caFile is the ca_file of an issuer or a
// proxy grant of p.
func (p *Policy) namesCAFile(caFile string) bool {
	if caFile == "" {
		return false
	}
	for i := range p.issuers {
		if p.issuers[i].CAFile == caFile {
			return true
		}
	}
	for i := range p.grants {
		if g := &p.grants[i]; g.Proxy != nil && g.Proxy.CAFile == caFile {
			return true
		}
	}
	return false
}
