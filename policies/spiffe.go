package policies

import (
	"errors"
	"strings"
)

// spiffeScheme is the prefix of every SPIFFE ID (the SPIFFE ID spec, §2:
// the scheme is "spiffe", in lower case, and the authority is the trust
// domain name).
const spiffeScheme = "spiffe://"

// MaxSPIFFEIDLen is the longest SPIFFE ID taken, in bytes, the whole URI:
// the SPIFFE ID spec (§2.3) has implementations support IDs up to 2048
// bytes and generate none longer, so a longer one is not a SPIFFE ID any
// conforming issuer made.
const MaxSPIFFEIDLen = 2048

// ParseSPIFFEID parses id strictly per the SPIFFE ID spec (§2): the scheme
// "spiffe://", a trust domain name of 1 to 255 characters [a-z0-9._-] (so no
// upper case, port, user info or percent-encoding), then a path of one or
// more "/"-separated segments of [a-zA-Z0-9._-], none empty, "." or ".."
// (so no trailing slash, query or fragment), at most MaxSPIFFEIDLen bytes
// in all. It returns the trust domain name and the path ("" for a
// trust-domain id, spiffe://<td>). Its errors name the rule broken, never
// the id.
func ParseSPIFFEID(id string) (td, path string, err error) {
	rest, ok := strings.CutPrefix(id, spiffeScheme)
	if !ok {
		return "", "", errors.New(`not a SPIFFE ID: must start with "spiffe://"`)
	}
	if len(id) > MaxSPIFFEIDLen {
		return "", "", errors.New("not a SPIFFE ID: longer than 2048 bytes (the SPIFFE ID spec's limit)")
	}
	td, path = rest, ""
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		td, path = rest[:i], rest[i:]
	}
	if !trustDomainRE.MatchString(td) {
		return "", "", errors.New("not a SPIFFE ID: the trust domain must be 1 to 255 characters [a-z0-9._-]")
	}
	if path == "" {
		return td, "", nil
	}
	for _, seg := range strings.Split(path[1:], "/") {
		switch seg {
		case "":
			return "", "", errors.New("not a SPIFFE ID: empty path segment (or a trailing slash)")
		case ".", "..":
			return "", "", errors.New(`not a SPIFFE ID: "." or ".." path segment`)
		}
		for i := 0; i < len(seg); i++ {
			if c := seg[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
				return "", "", errors.New("not a SPIFFE ID: path characters are limited to [a-zA-Z0-9._-]")
			}
		}
	}
	return td, path, nil
}

// SPIFFEWorkloadTrustDomain returns the trust domain name of sub when it is
// a SPIFFE ID with a path (a workload's, as a JWT-SVID's sub is: the
// SPIFFE JWT-SVID spec, §3), and false otherwise.
func SPIFFEWorkloadTrustDomain(sub string) (string, bool) {
	td, path, err := ParseSPIFFEID(sub)
	if err != nil || path == "" {
		return "", false
	}
	return td, true
}

// IsSPIFFEIssuer reports whether an issuer value is meant as a SPIFFE trust
// domain: its scheme is spiffe, in any case (whether it is a valid
// trust-domain id is CheckSPIFFEIssuer's question).
func IsSPIFFEIssuer(issuer string) bool {
	return len(issuer) >= len("spiffe:") && strings.EqualFold(issuer[:len("spiffe:")], "spiffe:")
}

// CheckSPIFFEIssuer checks an issuer value of scheme spiffe: it must be a
// trust-domain id, spiffe://<td> with no path, and it returns td.
func CheckSPIFFEIssuer(issuer string) (string, error) {
	td, path, err := ParseSPIFFEID(issuer)
	switch {
	case err != nil:
		return "", err
	case path != "":
		return "", errors.New("a SPIFFE issuer is a trust domain id, spiffe://<trust domain>, without a path")
	}
	return td, nil
}

// TrustDomain returns the trust domain name of an issuer whose issuer
// value is a SPIFFE trust-domain id (spiffe://<td>), else "". Such an
// issuer also takes the tokens without iss whose sub is a SPIFFE ID in its
// trust domain (SPIRE's JWT-SVIDs: iss only with jwt_issuer configured).
func (is *Issuer) TrustDomain() string {
	td, err := CheckSPIFFEIssuer(is.Issuer)
	if err != nil {
		return ""
	}
	return td
}
