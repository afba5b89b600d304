package vault_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	vault "github.com/keytrail/keytrail/adapters/vault"
)

// loginAnswer is one answer of scriptedLoginVault.
type loginAnswer struct {
	status     int
	retryAfter string // Retry-After header; "" = none
	body       any
}

// scriptedLoginVault answers the n-th PUT auth/kubernetes/login with
// answers[n-1] (the last one once past the end) and records the other
// requests (path and X-Vault-Token) it gets.
type scriptedLoginVault struct {
	srv     *httptest.Server
	answers []loginAnswer
	// otherStatus answers every other request (default 204).
	otherStatus int

	mu     sync.Mutex
	logins int
	others []string // "<method> <path> <token>"
}

func newScriptedLoginVault(t *testing.T, answers ...loginAnswer) *scriptedLoginVault {
	t.Helper()
	f := &scriptedLoginVault{answers: answers}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.Method != http.MethodPut || r.URL.Path != "/v1/auth/kubernetes/login" {
			f.mu.Lock()
			f.others = append(f.others, r.Method+" "+r.URL.Path+" "+r.Header.Get("X-Vault-Token"))
			f.mu.Unlock()
			f.mu.Lock()
			st := f.otherStatus
			f.mu.Unlock()
			if st == 0 {
				st = http.StatusNoContent
			}
			w.WriteHeader(st)
			if st != http.StatusNoContent {
				_ = json.NewEncoder(w).Encode(map[string]any{"errors": []string{"permission denied"}})
			}
			return
		}
		f.mu.Lock()
		f.logins++
		a := f.answers[min(f.logins, len(f.answers))-1]
		f.mu.Unlock()
		if a.retryAfter != "" {
			w.Header().Set("Retry-After", a.retryAfter)
		}
		w.WriteHeader(a.status)
		_ = json.NewEncoder(w).Encode(a.body)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *scriptedLoginVault) otherRequests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.others...)
}

// waitRecorder is a LoginOptions.After that fires at once and records
// the waits asked of it.
type waitRecorder struct {
	mu    sync.Mutex
	waits []time.Duration
}

func (w *waitRecorder) after(d time.Duration) <-chan time.Time {
	w.mu.Lock()
	w.waits = append(w.waits, d)
	w.mu.Unlock()
	ch := make(chan time.Time, 1)
	ch <- time.Time{}
	return ch
}

// got returns the waits asked so far.
func (w *waitRecorder) got() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]time.Duration(nil), w.waits...)
}

// TestLoginRunHonoursRetryAfter: a re-login that Vault's rate limit quota
// refuses with 429 and Retry-After is retried no sooner than Vault asks
// (bounded to 1-60 s, as mints pass it on), not after the backoff's
// 100 ms; a 429 without Retry-After keeps the backoff.
func TestLoginRunHonoursRetryAfter(t *testing.T) {
	dir := t.TempDir()
	jwtFile := writeLoginFile(t, dir, "token", "jwt-one")
	limited := map[string]any{"errors": []string{"request path \"auth/kubernetes/login\": rate limit quota exceeded"}}
	f := newScriptedLoginVault(t,
		// Not renewable, 1s: the watch gives up within it.
		loginAnswer{status: 200, body: authReply("hvs.first", 1, false)},
		loginAnswer{status: 429, retryAfter: "7", body: limited},
		loginAnswer{status: 429, retryAfter: "3600", body: limited},
		loginAnswer{status: 429, body: limited},
		loginAnswer{status: 429, retryAfter: "0", body: limited},
		loginAnswer{status: 200, body: authReply("hvs.second", 3600, false)},
	)
	c, err := vault.NewClient(vault.ClientOptions{Address: f.srv.URL, Token: placeholderToken, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var waits waitRecorder
	var logs loginLogBuffer
	l, err := vault.NewLogin(vault.LoginOptions{
		Client: c, Method: vault.LoginKubernetes, Role: "keytrail", JWTFile: jwtFile,
		RetryMin: 100 * time.Millisecond, RetryMax: 400 * time.Millisecond,
		After: waits.after, Logger: newLoginLogger(&logs),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	waitLogin(t, 10*time.Second, "a second successful login", func() bool { return c.Token() == "hvs.second" })
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run() after cancel = %v, want nil", err)
	}
	got := waits.got()
	// 7 s as Vault asks; 3600 s capped at 60 s; no Retry-After: the
	// backoff's 400 ms; 0 s: at least 1 s, more than the backoff's 400 ms.
	want := []time.Duration{7 * time.Second, time.Minute, 400 * time.Millisecond, time.Second}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("waits before each re-login (-want +got):\n%s", diff)
	}
	if !strings.Contains(logs.String(), `"retry_in":7000000000`) {
		t.Errorf("logs do not say retry_in 7s:\n%s", logs.String())
	}
}

// TestLoginRevokesUseLimitedToken: a login whose token has a use limit
// (the role's token_num_uses) is refused as vault_config, and the token it
// got is revoked with revoke-self (with that token) rather than left valid
// until its TTL; a revocation Vault refuses is logged, and counted
// (LoginStatus.RefusedRevokeFailures: it was only logged, uncounted, unlike
// a replaced token's), and the login error stays the use limit's.
func TestLoginRevokesUseLimitedToken(t *testing.T) {
	for _, tc := range []struct {
		name         string
		otherStatus  int
		wantLog      string
		wantFailures int
	}{
		{name: "revoked", otherStatus: 0},
		{name: "revoke-refused", otherStatus: http.StatusForbidden, wantLog: "could not revoke the token a login got", wantFailures: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			limited := authReply("hvs.limited", 60, true).(map[string]any)
			limited["auth"].(map[string]any)["num_uses"] = 5
			f := newScriptedLoginVault(t, loginAnswer{status: 200, body: limited})
			f.otherStatus = tc.otherStatus
			c, err := vault.NewClient(vault.ClientOptions{Address: f.srv.URL, Token: placeholderToken, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			var logs loginLogBuffer
			l, err := vault.NewLogin(vault.LoginOptions{Client: c, Method: vault.LoginKubernetes, Role: "keytrail",
				JWTFile: writeLoginFile(t, t.TempDir(), "jwt", "jwt-one"), Logger: newLoginLogger(&logs)})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			err = l.Start(ctx)
			if got, want := loginErrOf(err), (loginErr{Kind: unavailableKind, Reason: vault.ReasonConfig}); got != want {
				t.Fatalf("Start() = %v (%+v), want %+v", err, got, want)
			}
			if !strings.Contains(err.Error(), "use limit (num_uses=5)") {
				t.Errorf("Start() = %q, want it to name the use limit", err)
			}
			if diff := cmp.Diff([]string{"PUT /v1/auth/token/revoke-self hvs.limited"}, f.otherRequests()); diff != "" {
				t.Errorf("requests besides the login (-want +got):\n%s", diff)
			}
			if c.Token() == "hvs.limited" {
				t.Errorf("the client holds the refused token")
			}
			if tc.wantLog != "" && !strings.Contains(logs.String(), tc.wantLog) {
				t.Errorf("logs do not say %q:\n%s", tc.wantLog, logs.String())
			}
			if strings.Contains(logs.String(), "hvs.limited") || strings.Contains(err.Error(), "hvs.limited") {
				t.Errorf("the token is in the logs or the error:\n%s\n%v", logs.String(), err)
			}
			if st := l.Status(); st.RefusedRevokeFailures != tc.wantFailures || st.ReplacedRevokeFailures != 0 {
				t.Errorf("Status() RefusedRevokeFailures = %d, ReplacedRevokeFailures = %d; want %d, 0", st.RefusedRevokeFailures, st.ReplacedRevokeFailures, tc.wantFailures)
			}
		})
	}
}
