package vault

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// TestRetryAfterFromVault429: a 429 from Vault (a rate limit quota) with a
// Retry-After header makes the mint's error carry Vault's wait, bounded to
// [1 s, 60 s], where the broker answers 503 with Retry-After; without one
// (or unreadable), the fixed outage hint stays. Through the minter's
// client, and through the reader token's clone of a dynamic mint.
func TestRetryAfterFromVault429(t *testing.T) {
	t.Parallel()
	const quotaBody = `{"errors":["request path \"auth/token/create-orphan\": rate limit quota exceeded"]}`
	for _, tc := range []struct {
		name       string
		retryAfter string // "" = no header
		status     int
		want       time.Duration
	}{
		{"ok/vault-wait", "7", 429, 7 * time.Second},
		{"ok/capped-at-60s", "3600", 429, 60 * time.Second},
		{"ok/zero-is-1s", "0", 429, time.Second},
		{"ok/no-header", "", 429, retryOutage},
		{"ok/http-date-ignored", "Wed, 21 Oct 2015 07:28:00 GMT", 429, retryOutage},
		{"ok/negative-ignored", "-5", 429, retryOutage},
		{"ok/503-header-ignored", "7", 503, retryOutage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeVault(t, map[string]http.HandlerFunc{
				"PUT /v1/auth/token/create-orphan": func(w http.ResponseWriter, r *http.Request) {
					if tc.retryAfter != "" {
						w.Header().Set("Retry-After", tc.retryAfter)
					}
					replyRaw(tc.status, quotaBody)(w, r)
				},
			})
			m, err := NewTokenMinter(TokenMinterOptions{Client: f.client(t)})
			if err != nil {
				t.Fatal(err)
			}
			_, err = m.Mint(context.Background(), tokenReq(nil))
			var be *broker.Error
			if !errors.As(err, &be) {
				t.Fatalf("Mint() = %v, want a *broker.Error", err)
			}
			if be.Kind != broker.ErrUnavailable || be.Reason != ReasonUnavailable || be.RetryAfter != tc.want {
				t.Errorf("Mint() = %v (kind %v, reason %s, retry after %v), want %s, retry after %v", err, be.Kind, be.Reason, be.RetryAfter, ReasonUnavailable, tc.want)
			}
		})
	}

	t.Run("ok/dynamic-read-through-clone", func(t *testing.T) {
		t.Parallel()
		f := newTokenFake(t, map[string]tokenRoute{
			createOrphan: {brokerToken, readerAuth(900, false)},
			readCreds: {readerToken, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", "9")
				replyRaw(429, `{"errors":["rate limit quota exceeded"]}`)(w, r)
			}},
			revokeAcc: {brokerToken, replyRaw(204, "")},
		})
		m, err := NewDynamicMinter(DynamicMinterOptions{Client: f.client(t), Now: func() time.Time { return t0 }})
		if err != nil {
			t.Fatal(err)
		}
		_, err = m.Mint(context.Background(), dynReq(nil))
		var be *broker.Error
		if !errors.As(err, &be) || be.RetryAfter != 9*time.Second {
			t.Errorf("Mint() = %v, want an error with retry after 9s", err)
		}
	})
}
