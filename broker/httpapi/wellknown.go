package httpapi

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/MicahParks/jwkset"

	"github.com/keytrail/keytrail/broker"
)

// handleDiscovery serves the OpenID discovery document for verifiers of
// broker-issued JWTs.
func (s *Server) handleDiscovery(w http.ResponseWriter, r *http.Request) {
	base := strings.TrimRight(s.o.PublicURL, "/")
	algs := []string{"ES256", "EdDSA"}
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                                base,
		"jwks_uri":                              base + "/.well-known/jwks.json",
		"token_endpoint":                        base + "/v1/token",
		"introspection_endpoint":                base + "/v1/introspect",
		"grant_types_supported":                 []string{broker.GrantTypeTokenExchange},
		"id_token_signing_alg_values_supported": algs,
		"response_types_supported":              []string{"token"},
		"subject_types_supported":               []string{"public"},
		"token_endpoint_auth_methods_supported": []string{"none"},
	})
}

// handleJWKS serves the public keys of the Vault transit keys that sign
// broker JWTs. Private keys never leave Vault.
func (s *Server) handleJWKS(w http.ResponseWriter, r *http.Request) {
	set := jwkset.JWKSMarshal{Keys: []jwkset.JWKMarshal{}}
	if s.o.Keys != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		keys, err := s.o.Keys.PublicKeys(ctx)
		if err != nil {
			s.WriteError(w, r, err)
			return
		}
		for _, k := range keys {
			jwk, err := jwkset.NewJWKFromKey(k.Key, jwkset.JWKOptions{
				Metadata: jwkset.JWKMetadataOptions{KID: k.KID, ALG: jwkset.ALG(k.Alg), USE: jwkset.UseSig},
			})
			if err != nil {
				s.WriteError(w, r, broker.Unavailable("jwks_encode", time.Second, err))
				return
			}
			set.Keys = append(set.Keys, jwk.Marshal())
		}
	}
	// writeJSON's headers but a public cache time: verifiers may cache
	// the keys.
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "public, max-age=60")
	h.Set("X-Content-Type-Options", "nosniff")
	writeJSONRaw(w, set)
}

func writeJSONRaw(w http.ResponseWriter, v any) {
	w.WriteHeader(http.StatusOK)
	enc := jsonEncoder(w)
	_ = enc.Encode(v)
}
