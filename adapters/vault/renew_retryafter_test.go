package vault

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
)

// TestKeepAliveHonoursRetryAfter: a renewal of the broker's token that a
// Vault rate limit quota refuses (429) is retried no sooner than its
// Retry-After asks (bounded to 1-60 s, as for Run's re-logins), not after
// the backoff's RetryMin; a 429 without Retry-After keeps the backoff; and
// the wait never runs past the point where the token must be replaced
// (a tenth of its lease before its end). The wait asked of the timer is
// checked, not how long anything took.
func TestKeepAliveHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		lease      int    // of the token, seconds
		retryAfter string // of the 429; "" none
		// want is the wait asked before the second renewal, or, when max
		// is set, a wait in (want, max].
		want, max time.Duration
	}{
		{name: "ok/vault-wait", lease: 3600, retryAfter: "7", want: 7 * time.Second},
		{name: "ok/capped-at-60s", lease: 3600, retryAfter: "3600", want: time.Minute},
		{name: "ok/no-header-backoff", lease: 3600, want: 100 * time.Millisecond},
		// 30 s lease: replaced from 27 s on, before Retry-After's 60 s.
		{name: "ok/capped-by-the-lease", lease: 30, retryAfter: "60", want: 20 * time.Second, max: 27 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var mu sync.Mutex
			renewals := 0
			f := newFakeVault(t, map[string]http.HandlerFunc{
				"PUT /v1/auth/token/renew-self": func(w http.ResponseWriter, r *http.Request) {
					mu.Lock()
					renewals++
					n := renewals
					mu.Unlock()
					if n == 1 {
						if tc.retryAfter != "" {
							w.Header().Set("Retry-After", tc.retryAfter)
						}
						replyRaw(http.StatusTooManyRequests, `{"errors":["request path \"auth/token/renew-self\": rate limit quota exceeded"]}`)(w, r)
						return
					}
					reply(w, 200, map[string]any{"auth": map[string]any{"client_token": brokerToken, "accessor": "acc-broker", "lease_duration": tc.lease, "renewable": true}})
				},
			})
			l, err := NewLogin(LoginOptions{Client: f.client(t), Method: LoginToken, Token: brokerToken,
				RetryMin: 100 * time.Millisecond, RetryMax: 400 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			// The first wait fires at once; the next one blocks until the
			// test has seen it and ends keepAlive.
			waits := make(chan time.Duration, 8)
			var once sync.Once
			l.renewAfter = func(d time.Duration) <-chan time.Time {
				waits <- d
				ch := make(chan time.Time, 1)
				once.Do(func() { ch <- time.Time{} })
				return ch
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() {
				done <- l.keepAlive(ctx, &vaultapi.Secret{Auth: &vaultapi.SecretAuth{ClientToken: brokerToken, Accessor: "acc-broker", LeaseDuration: tc.lease, Renewable: true}})
			}()
			var got time.Duration
			select {
			case got = <-waits:
			case err := <-done:
				t.Fatalf("keepAlive() = %v before waiting to renew again", err)
			case <-time.After(10 * time.Second):
				t.Fatal("keepAlive asked for no wait within 10s")
			}
			switch {
			case tc.max == 0 && got != tc.want:
				t.Errorf("wait after a 429 (Retry-After %q) = %v, want %v", tc.retryAfter, got, tc.want)
			case tc.max != 0 && (got <= tc.want || got > tc.max):
				t.Errorf("wait after a 429 (Retry-After %q), lease %ds = %v, want in (%v, %v]", tc.retryAfter, tc.lease, got, tc.want, tc.max)
			}
			// The second renewal follows that wait, and succeeds.
			select {
			case <-waits:
			case err := <-done:
				t.Fatalf("keepAlive() = %v after the second renewal, want it renewing", err)
			case <-time.After(10 * time.Second):
				t.Fatal("keepAlive did not renew again within 10s")
			}
			cancel()
			if err := <-done; err != nil {
				t.Errorf("keepAlive() after cancel = %v, want nil", err)
			}
			if n := f.count("PUT /v1/auth/token/renew-self"); n != 2 {
				t.Errorf("renew-self calls = %d, want 2", n)
			}
		})
	}
}
