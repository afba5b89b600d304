package authntest_test

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/authn/authntest"
)

func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func TestIssuer(t *testing.T) {
	for _, alg := range []string{"ES256", "EdDSA", "RS256"} {
		t.Run("ok/"+alg, func(t *testing.T) {
			iss, err := authntest.NewIssuer(alg)
			if err != nil {
				t.Fatalf("NewIssuer(%s) = %v", alg, err)
			}
			srv := httptest.NewServer(iss.Handler())
			defer srv.Close()
			iss.URL = srv.URL

			_, body := get(t, srv.URL+authntest.DiscoveryPath)
			var doc struct {
				Issuer  string `json:"issuer"`
				JWKSURI string `json:"jwks_uri"`
			}
			if err := json.Unmarshal(body, &doc); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]string{srv.URL, srv.URL + authntest.JWKSPath}, []string{doc.Issuer, doc.JWKSURI}); diff != "" {
				t.Errorf("discovery (-want +got):\n%s", diff)
			}
			_, jwks := get(t, doc.JWKSURI)
			if diff := cmp.Diff(string(iss.JWKS()), string(jwks)); diff != "" {
				t.Errorf("served JWKS differs from JWKS() (-want +got):\n%s", diff)
			}
			iss.SetDown(true)
			if code, _ := get(t, doc.JWKSURI); code != http.StatusServiceUnavailable {
				t.Errorf("GET jwks while down = %d, want 503", code)
			}
			if got := []int64{iss.DiscoveryFetches(), iss.JWKSFetches()}; !cmp.Equal(got, []int64{1, 2}) {
				t.Errorf("fetches [discovery jwks] = %v, want [1 2]", got)
			}

			tok, err := iss.Token("sub-1", "keytrail", time.Now(), time.Minute)
			if err != nil {
				t.Fatalf("Token() = %v", err)
			}
			parsed, err := jwt.Parse(tok, func(*jwt.Token) (any, error) { return iss.Key().Public(), nil },
				jwt.WithValidMethods([]string{alg}), jwt.WithIssuer(srv.URL), jwt.WithAudience("keytrail"))
			if err != nil {
				t.Fatalf("jwt.Parse(Token()) = %v", err)
			}
			if got := parsed.Header["kid"]; got != iss.Key().KID {
				t.Errorf("kid = %v, want %v", got, iss.Key().KID)
			}
		})
	}
	if _, err := authntest.NewIssuer("HS256"); err == nil {
		t.Errorf("NewIssuer(HS256) = nil error, want error")
	}
}

// TestEd25519Key: a key of RFC 9864's "Ed25519" is published with that alg
// and signs tokens whose header says it, with an EdDSA signature.
func TestEd25519Key(t *testing.T) {
	k, err := authntest.NewKey("Ed25519")
	if err != nil {
		t.Fatal(err)
	}
	b, err := authntest.MarshalJWKS(k)
	if err != nil {
		t.Fatal(err)
	}
	var set struct{ Keys []map[string]any }
	if err := json.Unmarshal(b, &set); err != nil {
		t.Fatal(err)
	}
	if got := []any{set.Keys[0]["alg"], set.Keys[0]["kty"], set.Keys[0]["crv"]}; !cmp.Equal(got, []any{"Ed25519", "OKP", "Ed25519"}) {
		t.Errorf("JWK alg, kty, crv = %v, want [Ed25519 OKP Ed25519]", got)
	}
	tok, err := authntest.SignWith(k, nil, jwt.MapClaims{"sub": "s"})
	if err != nil {
		t.Fatal(err)
	}
	// jwt/v5 alone has no method for "Ed25519" (broker/authn registers
	// one): the token is taken apart by hand.
	parts := strings.Split(tok, ".")
	hdr, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	if err := json.Unmarshal(hdr, &h); err != nil {
		t.Fatal(err)
	}
	if h["alg"] != "Ed25519" || h["kid"] != k.KID {
		t.Errorf("header = %v, want alg Ed25519 and kid %s", h, k.KID)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		t.Fatal(err)
	}
	if err := jwt.SigningMethodEdDSA.Verify(parts[0]+"."+parts[1], sig, k.Public()); err != nil {
		t.Errorf("EdDSA Verify = %v, want nil", err)
	}
}
