package authn

// SignatureChecks is how many signature verifications v has attempted.
func (v *Verifier) SignatureChecks() int64 { return v.sigChecks.Load() }

// VerifiedCacheLen is how many verified tokens v remembers.
func (v *Verifier) VerifiedCacheLen() int { return v.verified.len() }
