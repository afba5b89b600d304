package vault

import "sync/atomic"

// TokenLeases records that a Vault lease may belong to the broker's own
// token: a PKI role with generate_lease=true gives each certificate issued
// with that token a lease owned by it, and Vault revokes a token's leases
// when the token is revoked or expires, a PKI lease by putting its
// certificate on the CRL. Login, given one, then leaves the token a
// re-login replaced valid until its TTL instead of revoking it (which
// would revoke every certificate issued with it at once). PKIMinter notes
// a lease in an issue answer and a role that sets generate_lease. The
// zero value is ready; a nil *TokenLeases notes nothing and holds none.
//
// It is sticky: once a lease was seen, no replaced token is revoked for
// the rest of the process (the leases of a token cannot be listed
// without sudo on sys/leases).
type TokenLeases struct {
	held atomic.Bool
}

// Note records that a lease may belong to the broker's token. It reports
// whether this was the first note.
func (t *TokenLeases) Note() bool {
	return t != nil && t.held.CompareAndSwap(false, true)
}

// Held reports whether Note was called.
func (t *TokenLeases) Held() bool {
	return t != nil && t.held.Load()
}
