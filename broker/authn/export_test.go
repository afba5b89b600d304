package authn

// SignatureChecks is how many signature verifications v has attempted.
func (v *Verifier) SignatureChecks() int64 { return v.sigChecks.Load() }

// VerifiedCacheLen is how many verified tokens v remembers.
func (v *Verifier) VerifiedCacheLen() int { return v.verified.len() }

// WaitFetches waits for the JWKS fetch each issuer of v has running, if
// any: a request that served stale keys started it in the background. It
// returns once v's own fetches have also run OnFetch.
func (v *Verifier) WaitFetches() {
	defer v.fetches.Wait()
	for _, st := range v.issuers {
		st.mu.Lock()
		call := st.inflight
		st.mu.Unlock()
		if call != nil {
			<-call.done
		}
	}
}
