package vault

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// pathMarker is a secret pasted into the path of vault.address.
const pathMarker = "PATH-MARKER-7"

// TestVaultErrorHidesAddressPath: the errors the adapter returns (and logs:
// the re-login WARN/ERROR lines print them) for a request that failed quoted
// the Vault client's request URL whole, the configured address's path (a
// token pasted into it) included: translate hid only user info. A real
// refused request and an answered one, through a token minter, Health and a
// Login, now name the request (//host/v1/...) without the path.
func TestVaultErrorHidesAddressPath(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = w.Write([]byte(`{"errors":["internal error"]}`))
	}))
	t.Cleanup(srv.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	answering := strings.TrimPrefix(srv.URL, "http://")
	for _, p := range []string{"/" + pathMarker, "/a/" + pathMarker + "/", "/v1/" + pathMarker, "/a//" + pathMarker + "/./b"} {
		for _, target := range []struct {
			name, host string
			refused    bool
		}{
			{"answering", answering, false},
			{"refused", closed, true},
		} {
			where := target.name + p
			addr := "http://" + target.host + p
			vc, err := NewClient(ClientOptions{Address: addr, Token: brokerToken, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatalf("%s: NewClient: %v", where, err)
			}
			m, err := NewTokenMinter(TokenMinterOptions{Client: vc})
			if err != nil {
				t.Fatal(err)
			}
			lc, err := NewClient(ClientOptions{Address: addr, NoToken: true, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatalf("%s: NewClient: %v", where, err)
			}
			l, err := NewLogin(LoginOptions{Client: lc, Method: LoginToken, Token: brokerToken})
			if err != nil {
				t.Fatalf("%s: NewLogin: %v", where, err)
			}
			_, mintErr := m.Mint(context.Background(), tokenReq(nil))
			errs := map[string]error{
				"Mint":   mintErr,
				"Revoke": m.Revoke(context.Background(), &broker.Issuance{Refs: broker.CredentialRefs{Accessor: "acc"}}),
				"Health": Health(context.Background(), vc),
				"Login":  l.Start(context.Background()),
			}
			for name, err := range errs {
				if err == nil {
					t.Errorf("%s/%s = nil error, want Vault's error", where, name)
					continue
				}
				if strings.Contains(err.Error(), pathMarker) {
					t.Errorf("%s/%s error = %q, quotes the path of vault.address", where, name, err)
				}
				if !strings.Contains(err.Error(), "//"+target.host+"/v1/") {
					t.Errorf("%s/%s error = %q, want the request named as //%s/v1/...", where, name, err, target.host)
				}
				var be *broker.Error
				if !errors.As(err, &be) || be.Reason == "" {
					t.Errorf("%s/%s error = %v, want a *broker.Error with a reason", where, name, err)
				}
				if target.refused && !errors.Is(err, syscall.ECONNREFUSED) {
					t.Errorf("%s/%s error = %v, no longer unwraps to the refused connection", where, name, err)
				}
			}
		}
	}
}
