package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker/authn/authntest"
)

// TestDevIssuerTokenIsUsableAsWritten: the demo issuer answered
// GET /token/{name} with the token and a newline. The README and dev's
// printed steps offer `curl -s 127.0.0.1:7701/token/payments-api` for a
// fresh token (the ones dev writes expire after 1 h), and a user who saved
// it to a file and sent it as dev's printed exchange does
// (--data-urlencode subject_token@FILE, the file's bytes exactly) was
// refused 401 invalid_grant "identity token rejected: malformed": the
// broker takes no whitespace around a token (authn's
// fail/trailing-newline case). The token is now served as it is, and the
// printed step writes it to the file the other printed commands read.
func TestDevIssuerTokenIsUsableAsWritten(t *testing.T) {
	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		t.Fatal(err)
	}
	iss.URL = devIssuerURL
	srv := httptest.NewServer(devIssuerHandler(iss))
	defer srv.Close()
	for _, name := range []string{"payments-api", "ci-deploy", "secops"} {
		resp, err := http.Get(srv.URL + "/token/" + name)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /token/%s: %d %v", name, resp.StatusCode, err)
		}
		tok := string(body)
		if strings.TrimSpace(tok) != tok || strings.Count(tok, ".") != 2 || strings.ContainsAny(tok, " \t\r\n") {
			t.Errorf("GET /token/%s: %d bytes ending %q: want a compact JWS with nothing around it, as the broker takes it", name, len(tok), tok[max(0, len(tok)-4):])
		}
	}
	if !strings.Contains(devNextSteps, "curl -s {ISSUER}/token/payments-api -o {TOKEN}") {
		t.Errorf("dev's steps do not write the fresh token where the other commands read it:\n%s", devNextSteps)
	}
}
