package authntest_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
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
