package client

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"
)

// reply is one scripted answer of the fake broker.
type reply struct {
	status int
	body   string
	header map[string]string
}

// fakeBroker answers POST /v1/token with scripted replies (the last one
// repeats) and records every form it was sent. Anything else fails the
// test.
type fakeBroker struct {
	t       *testing.T
	mu      sync.Mutex
	replies []reply
	forms   []url.Values
	srv     *httptest.Server
}

func newFakeBroker(t *testing.T, replies ...reply) *fakeBroker {
	t.Helper()
	f := &fakeBroker{t: t, replies: replies}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeBroker) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/token" || r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
		f.t.Errorf("fake broker: unexpected %s %s (%s)", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
		http.Error(w, "unexpected", http.StatusTeapot)
		return
	}
	raw, _ := io.ReadAll(r.Body)
	form, err := url.ParseQuery(string(raw))
	if err != nil {
		f.t.Errorf("fake broker: bad form: %v", err)
	}
	f.mu.Lock()
	f.forms = append(f.forms, form)
	rep := f.replies[0]
	if len(f.replies) > 1 {
		f.replies = f.replies[1:]
	}
	f.mu.Unlock()
	w.Header().Set("X-Request-Id", "req_hdr")
	w.Header().Set("Content-Type", "application/json")
	for k, v := range rep.header {
		w.Header().Set(k, v)
	}
	w.WriteHeader(rep.status)
	io.WriteString(w, rep.body)
}

func (f *fakeBroker) sent() []url.Values {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]url.Values(nil), f.forms...)
}

// fakeClock is a manual clock whose Sleep records the wait and advances
// time at once: schedules are checked without real sleeps.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	sleeps []time.Duration
	// onSleep, when set, runs after each sleep (e.g. to cancel a context).
	onSleep func(n int)
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.sleeps = append(c.sleeps, d)
	n := len(c.sleeps)
	hook := c.onSleep
	c.mu.Unlock()
	if hook != nil {
		hook(n)
	}
	return ctx.Err()
}

func (c *fakeClock) slept() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.sleeps...)
}

const okBody = `{"access_token":"hvs.SECRET-TOKEN","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":900,"issuance_id":"iss_1","workload":"payments-api","owner":"team-payments","session_id":"ses_1","grant":"payments-vault","kind":"vault_token","credential":{"accessor":"acc_1","policies":["payments-read"],"ttl":900}}`

func okReply(issuance string, expiresIn int) reply {
	return reply{status: 200, body: `{"access_token":"tok-` + issuance + `","token_type":"Bearer","expires_in":` +
		strconv.Itoa(expiresIn) + `,"issuance_id":"` + issuance + `","grant":"g","kind":"vault_token"}`}
}

func errReply(status int, code, retryAfter string) reply {
	r := reply{status: status, body: `{"error":"` + code + `","error_description":"safe text","request_id":"req_body"}`}
	if retryAfter != "" {
		r.header = map[string]string{"Retry-After": retryAfter}
	}
	return r
}

// staticIdentity returns a fixed token.
func staticIdentity(tok string) IdentitySource {
	return IdentityFunc{Name: "test", Func: func(context.Context) (string, error) { return tok, nil }}
}
