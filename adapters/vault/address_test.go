package vault

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// Markers of a vault.address's user info (basic auth for a front proxy).
const (
	userMarker   = "USER-MARKER-3"
	secretMarker = "SECRET-MARKER-4"
)

// userinfoCases are the shapes of user info an address may carry.
var userinfoCases = []struct{ name, userinfo string }{
	{"user-and-password", userMarker + ":" + secretMarker},
	{"user", userMarker},
	{"user-and-empty-password", userMarker + ":"},
	{"escaped-user", userMarker + "%2Fci:" + secretMarker},
	{"escaped-password", userMarker + ":" + secretMarker + "%40x"},
}

func leaksUserinfo(s string) bool {
	return strings.Contains(s, userMarker) || strings.Contains(s, secretMarker)
}

// TestDisplayAddressLeavesOutUserinfo: the address as messages show it has
// no user info, path (it kept the path, where a token may be pasted), query
// or fragment: its scheme and host only.
func TestDisplayAddressLeavesOutUserinfo(t *testing.T) {
	t.Parallel()
	for _, c := range userinfoCases {
		got := DisplayAddress("https://" + c.userinfo + "@vault.internal:8200/" + secretMarker + "?token=" + secretMarker + "#" + secretMarker)
		if want := "https://vault.internal:8200"; got != want {
			t.Errorf("%s: DisplayAddress = %q, want %q", c.name, got, want)
		}
	}
	if got := DisplayAddress("http://" + userMarker + ":" + secretMarker + "@host:8200\x7f"); leaksUserinfo(got) {
		t.Errorf("DisplayAddress of an unparsable address = %q, quotes its user info", got)
	}
}

// TestVaultErrorHidesAddressUserinfo: the adapter's errors masked only the
// password of a vault.address with user info, and only in a Vault response
// error: the name stayed there, and net/http's error of a refused
// connection ('Get "http://user:***@host/v1/..."') kept the name, or the
// whole user info when it had no password. No part of it is in any error
// now, and the errors still unwrap as before.
func TestVaultErrorHidesAddressUserinfo(t *testing.T) {
	t.Parallel()
	f := newFakeVault(t, map[string]http.HandlerFunc{
		"PUT /v1/auth/token/create-orphan":   replyRaw(500, `{"errors":["internal error"]}`),
		"PUT /v1/auth/token/revoke-accessor": replyRaw(403, `{"errors":["permission denied"]}`),
		"GET /v1/sys/health":                 replyRaw(502, `<html>bad gateway</html>`),
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	for _, c := range userinfoCases {
		for _, target := range []struct {
			name, addr string
			refused    bool
		}{
			{"answering", strings.Replace(f.srv.URL, "://", "://"+c.userinfo+"@", 1), false},
			{"refused", "http://" + c.userinfo + "@" + closed, true},
		} {
			vc, err := NewClient(ClientOptions{Address: target.addr, Token: brokerToken, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatalf("%s/%s: NewClient: %v", c.name, target.name, err)
			}
			m, err := NewTokenMinter(TokenMinterOptions{Client: vc})
			if err != nil {
				t.Fatal(err)
			}
			_, mintErr := m.Mint(context.Background(), tokenReq(nil))
			revokeErr := m.Revoke(context.Background(), &broker.Issuance{Refs: broker.CredentialRefs{Accessor: "acc"}})
			healthErr := Health(context.Background(), vc)
			for name, err := range map[string]error{"Mint": mintErr, "Revoke": revokeErr, "Health": healthErr} {
				where := c.name + "/" + target.name + "/" + name
				if err == nil {
					t.Errorf("%s = nil error, want Vault's error", where)
					continue
				}
				if leaksUserinfo(err.Error()) {
					t.Errorf("%s error = %q, quotes the user info of vault.address", where, err)
				}
				if !strings.Contains(err.Error(), "/v1/") {
					t.Errorf("%s error = %q, want the request URL kept for the log", where, err)
				}
				var be *broker.Error
				if !errors.As(err, &be) || be.Reason == "" {
					t.Errorf("%s error = %v, want a *broker.Error with a reason", where, err)
				}
				if target.refused {
					var ue *url.Error
					var oe *net.OpError
					if !errors.Is(err, syscall.ECONNREFUSED) || !errors.As(err, &ue) || !errors.As(err, &oe) {
						t.Errorf("%s error = %v, no longer unwraps to the refused connection", where, err)
					}
					if be != nil && be.Reason != ReasonUnavailable {
						t.Errorf("%s reason = %q, want %q", where, be.Reason, ReasonUnavailable)
					}
				}
			}
		}
	}
}

// TestHideUserinfoKeepsOtherErrors: an error with no user info in its text
// comes back as it is.
func TestHideUserinfoKeepsOtherErrors(t *testing.T) {
	t.Parallel()
	err := errors.New(`Get "http://127.0.0.1:8200/v1/sys/health": dial tcp: connection refused`)
	if got := HideUserinfo(err, "http://127.0.0.1:8200"); got != err {
		t.Errorf("HideUserinfo = %v, want err itself", got)
	}
}

// TestHideUserinfoHidesAddressPath: a vault.address with a path (a token
// pasted into it) was quoted whole by the Vault client's errors, in the
// request URL ('Get "http://host/PATH/v1/sys/health"'). HideUserinfo given
// the address now leaves its path out of the text, the request (/v1/...)
// still named, and the error still unwraps to the refused connection.
func TestHideUserinfoHidesAddressPath(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	for _, p := range []string{"/" + secretMarker, "/" + secretMarker + "/", "/a/" + secretMarker + "%2Fx", "/a//" + secretMarker + "/./b"} {
		addr := "http://" + userMarker + "@" + closed + p
		vc, err := NewClient(ClientOptions{Address: addr, Token: brokerToken, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatalf("%s: NewClient: %v", p, err)
		}
		healthErr := Health(context.Background(), vc)
		if healthErr == nil {
			t.Fatalf("%s: Health of a closed port = nil error", p)
		}
		got := HideUserinfo(healthErr, addr)
		if leaksUserinfo(got.Error()) {
			t.Errorf("%s: HideUserinfo = %q, quotes the address's path or user info", p, got)
		}
		if want := "//" + closed + "/v1/sys/health"; !strings.Contains(got.Error(), want) {
			t.Errorf("%s: HideUserinfo = %q, want the request named as %q", p, got, want)
		}
		if !errors.Is(got, syscall.ECONNREFUSED) {
			t.Errorf("%s: HideUserinfo = %v, no longer unwraps to the refused connection", p, got)
		}
	}
}
