package main

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/httpapi"
	"github.com/keytrail/keytrail/policies"
)

// TestAdminCommandsExplainRefusedToken: revoke, trace and report against a
// real broker API that refuses the admin token print the server's 401
// answer (code, description, request id) and say which admin token to
// check, never the token itself.
func TestAdminCommandsExplainRefusedToken(t *testing.T) {
	pol, err := policies.Parse("p.yaml", []byte(cliPolicy))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := broker.NewService(broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return brokertest.Authn{} },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: &brokertest.Minter{}},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: &brokertest.Minter{}},
		Store:    memstore.New(time.Now),
		Audit:    &brokertest.Sink{},
	})
	if err != nil {
		t.Fatal(err)
	}
	api, err := httpapi.New(httpapi.Options{Service: svc, PublicURL: "https://keytrail.example",
		Extra: func(mux *http.ServeMux, s *httpapi.Server) {
			httpapi.RegisterAdmin(mux, s)
			httpapi.RegisterTrace(mux, s, nil) // the calls are refused before a lookup
		}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.Routes())
	defer srv.Close()

	const token = "forged-admin-token"
	env := map[string]string{"KEYTRAIL_ADDR": srv.URL, "KEYTRAIL_ADMIN_TOKEN": token}
	for _, args := range [][]string{
		{"revoke", "--workload", "batch", "--reason", "r"},
		{"trace", "iss_01JXCLI00000000000000000AA"},
		{"report", "--format", "json"},
	} {
		t.Run(args[0], func(t *testing.T) {
			out, stderr, err := runCLI(t, env, args...)
			var ee exitError
			if err == nil || errors.As(err, &ee) {
				t.Fatalf("%v = %v, want an error (exit 1)", args, err)
			}
			msg := err.Error()
			for _, want := range []string{
				args[0] + ": 401 invalid_token: identity token rejected",
				"(request_id req_",
				"the admin token (from KEYTRAIL_ADMIN_TOKEN) was refused: check its issuer, audience and expiry",
			} {
				if !strings.Contains(msg, want) {
					t.Errorf("%v error = %q, want it to contain %q", args, msg, want)
				}
			}
			if strings.Contains(msg+out+stderr, token) {
				t.Errorf("%v printed the admin token", args)
			}
		})
	}
}
