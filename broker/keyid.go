package broker

import (
	"strconv"
	"strings"
)

// KeyID is the KID of version version of the signing key name (a Vault
// transit key): "<name>:<version>". Minters put it in the JWT header and
// the JWKS serves it; ParseKeyID reads it back.
func KeyID(name string, version int) string { return name + ":" + strconv.Itoa(version) }

// ParseKeyID splits a KID KeyID made into its key name and version, at the
// last ":" (a version holds none; were a name ever to hold one, it stays
// the name's). ok is false for anything KeyID does not make: no ":", an
// empty name, or a version that is not a positive decimal written as
// KeyID writes it ("01", "+1" and "1.0" are not).
func ParseKeyID(kid string) (name string, version int, ok bool) {
	i := strings.LastIndexByte(kid, ':')
	if i <= 0 {
		return "", 0, false
	}
	v, err := strconv.Atoi(kid[i+1:])
	if err != nil || v < 1 || strconv.Itoa(v) != kid[i+1:] {
		return "", 0, false
	}
	return kid[:i], v, true
}
