package authn

import "github.com/golang-jwt/jwt/v5"

// AlgEd25519 is the fully specified JOSE algorithm of RFC 9864 (2025):
// EdDSA with the Ed25519 curve, which the polymorphic "EdDSA" leaves to the
// key. Its signatures are exactly EdDSA's over Ed25519 (RFC 8037).
const AlgEd25519 = "Ed25519"

// ed25519Method verifies "Ed25519" signatures with jwt/v5's EdDSA method:
// jwt/v5 (v5.3.1) registers only "EdDSA", and refuses a token whose alg it
// has no method for as unverifiable. Verify takes an ed25519.PublicKey and
// nothing else (any other key is jwt.ErrInvalidKeyType), so the name cannot
// pair the alg with an RSA or ECDSA key, whatever the key selection does.
type ed25519Method struct{ *jwt.SigningMethodEd25519 }

func (ed25519Method) Alg() string { return AlgEd25519 }

// init registers "Ed25519" with jwt/v5, process-wide, unless a jwt/v5
// release already knows it (then its own method is used). Only this
// package parses tokens, and it hands a method a key only for an alg the
// issuer allows (route, usableFor).
func init() {
	if jwt.GetSigningMethod(AlgEd25519) == nil {
		m := ed25519Method{jwt.SigningMethodEdDSA}
		jwt.RegisterSigningMethod(AlgEd25519, func() jwt.SigningMethod { return m })
	}
}
