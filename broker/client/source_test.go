package client

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// newTestSource wires a Source to a fake broker and a fake clock.
func newTestSource(t *testing.T, fb *fakeBroker, clock *fakeClock, rnd float64, mod func(*SourceOptions)) *Source {
	t.Helper()
	c, err := New(Options{Addr: fb.srv.URL, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	o := SourceOptions{
		Client: c, Grant: "g", Exchange: ExchangeOptions{Identity: staticIdentity("jwt")},
		Now: clock.Now, Sleep: clock.Sleep, Rand: func() float64 { return rnd },
	}
	if mod != nil {
		mod(&o)
	}
	s, err := NewSource(o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestFetchHonoursRetryAfter(t *testing.T) {
	clock := newFakeClock()
	tests := []struct {
		name    string
		rnd     float64
		replies []reply
		want    []time.Duration
	}{
		{"ok/429-then-503-no-jitter", 0, []reply{errReply(429, CodeSlowDown, "3"), errReply(503, CodeTemporarilyUnavailable, "2"), okReply("iss_1", 60)},
			[]time.Duration{3 * time.Second, 2 * time.Second}},
		{"ok/429-max-jitter-adds-at-most-as-much-again", 0.999, []reply{errReply(429, CodeSlowDown, "4"), okReply("iss_1", 60)},
			[]time.Duration{4*time.Second + time.Duration(0.999*4*float64(time.Second))}},
		{"ok/retry-after-above-max-backoff-still-honoured", 0, []reply{errReply(503, CodeTemporarilyUnavailable, "120"), okReply("iss_1", 60)},
			[]time.Duration{120 * time.Second}},
		{"ok/no-retry-after-exponential", 0, []reply{errReply(503, CodeTemporarilyUnavailable, ""), errReply(502, "", ""), reply{status: 500, body: "x"}, okReply("iss_1", 60)},
			[]time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock.mu.Lock()
			clock.sleeps = nil
			clock.mu.Unlock()
			fb := newFakeBroker(t, tc.replies...)
			var retried []string
			s := newTestSource(t, fb, clock, tc.rnd, func(o *SourceOptions) {
				o.OnRetry = func(err error, wait time.Duration) { retried = append(retried, err.Error()) }
			})
			c, err := s.Fetch(context.Background())
			if err != nil || c.IssuanceID != "iss_1" {
				t.Fatalf("Fetch = %v, %v, want iss_1", c, err)
			}
			if diff := cmp.Diff(tc.want, clock.slept()); diff != "" {
				t.Errorf("Fetch(%s) waits (-want +got):\n%s", tc.name, diff)
			}
			if len(retried) != len(tc.want) || len(fb.sent()) != len(tc.replies) {
				t.Errorf("OnRetry called %d times, broker saw %d requests; want %d and %d", len(retried), len(fb.sent()), len(tc.want), len(tc.replies))
			}
		})
	}
}

func TestBackoffBounds(t *testing.T) {
	clock := newFakeClock()
	fb := newFakeBroker(t, okReply("iss_1", 60))
	for _, rnd := range []float64{0, 0.5, 0.999999} {
		s := newTestSource(t, fb, clock, rnd, func(o *SourceOptions) { o.MinBackoff, o.MaxBackoff = time.Second, 20*time.Second })
		for attempt := range 40 {
			step := min(time.Second<<min(attempt, 20), 20*time.Second)
			got := s.backoff(attempt, errors.New("connection refused"))
			if got < step/2 || got > step {
				t.Errorf("backoff(attempt %d, rand %v) = %v, want in [%v, %v]", attempt, rnd, got, step/2, step)
			}
		}
		ra := &Error{Status: 429, Code: CodeSlowDown, RetryAfter: 2 * time.Second}
		if got := s.backoff(7, ra); got < 2*time.Second || got >= 4*time.Second {
			t.Errorf("backoff(Retry-After 2s, rand %v) = %v, want in [2s, 4s)", rnd, got)
		}
	}
}

func TestRenewScheduleBounds(t *testing.T) {
	clock := newFakeClock()
	t0 := clock.Now()
	fb := newFakeBroker(t, okReply("iss_1", 60))
	tests := []struct {
		name string
		ttl  time.Duration
		rnd  float64
		want time.Duration
	}{
		{"ok/center", 900 * time.Second, 0.5, 600 * time.Second},
		{"ok/earliest", 900 * time.Second, 0, 510 * time.Second},
		{"ok/latest", 900 * time.Second, 1, 690 * time.Second},
		{"ok/short-ttl", 3 * time.Second, 0.5, 2 * time.Second},
		{"ok/one-second-ttl-floored", time.Second, 0.5, minRenewDelay},
		{"ok/tiny-ttl-floored", 0, 0.5, minRenewDelay},
	}
	for _, tc := range tests {
		s := newTestSource(t, fb, clock, tc.rnd, nil)
		c := &Credential{IssuedAt: t0, ExpiresAt: t0.Add(tc.ttl)}
		got := s.renewDelay(c)
		if d := got - tc.want; d < -time.Millisecond || d > time.Millisecond {
			t.Errorf("renewDelay(%s) = %v, want %v", tc.name, got, tc.want)
		}
		if got < time.Second {
			t.Errorf("renewDelay(%s) = %v, want at least 1s (one issuance a second at most)", tc.name, got)
		}
		if tc.ttl > 0 && got > minRenewDelay && (got < tc.ttl*17/30-time.Millisecond || got >= tc.ttl) {
			t.Errorf("renewDelay(%s) = %v, outside [17/30, 1) of the TTL", tc.name, got)
		}
	}
}

func TestRunRenewsBeforeExpiryAndKeepsLastOnTransientFailure(t *testing.T) {
	clock := newFakeClock()
	fb := newFakeBroker(t,
		okReply("iss_1", 90),
		errReply(503, CodeTemporarilyUnavailable, "5"),
		errReply(429, CodeSlowDown, "1"),
		okReply("iss_2", 90),
		okReply("iss_3", 90),
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu       sync.Mutex
		got      []string
		duringRe []string
	)
	var s *Source
	s = newTestSource(t, fb, clock, 0.5, func(o *SourceOptions) {
		o.OnCredential = func(c *Credential) error {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, c.IssuanceID+"@"+c.IssuedAt.Sub(newFakeClock().now).String())
			if len(got) == 3 {
				cancel()
			}
			return nil
		}
		o.OnRetry = func(err error, wait time.Duration) {
			cur, cerr := s.Credential(context.Background())
			if cerr != nil {
				duringRe = append(duringRe, "error: "+cerr.Error())
				return
			}
			duringRe = append(duringRe, cur.IssuanceID)
		}
	})
	if err := s.Run(ctx); err != nil {
		t.Fatalf("Run = %v, want nil after cancellation", err)
	}
	// iss_1 at 0; renewal due at 60s (2/3 of 90s): 503 with Retry-After 5
	// (wait 5s + jitter 2.5s), 429 with Retry-After 1 (wait 1.5s), then
	// iss_2 at 69s, well before iss_1 expires at 90s; iss_3 60s later.
	want := []string{"iss_1@0s", "iss_2@1m9s", "iss_3@2m9s"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("credentials (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"iss_1", "iss_1"}, duringRe); diff != "" {
		t.Errorf("credential served while renewals failed (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]time.Duration{60 * time.Second, 7500 * time.Millisecond, 1500 * time.Millisecond, 60 * time.Second}, clock.slept()); diff != "" {
		t.Errorf("waits (-want +got):\n%s", diff)
	}
}

func TestRunStopsOnPermanentError(t *testing.T) {
	clock := newFakeClock()
	fb := newFakeBroker(t, okReply("iss_1", 90), errReply(403, CodeAccessDenied, ""))
	s := newTestSource(t, fb, clock, 0.5, nil)
	err := s.Run(context.Background())
	var be *Error
	if !errors.As(err, &be) || be.Code != CodeAccessDenied || !IsPermanent(err) {
		t.Fatalf("Run = %v, want the permanent access_denied error", err)
	}
	// 60s have passed: the last credential is still valid and served.
	if c, err := s.Credential(context.Background()); err != nil || c.IssuanceID != "iss_1" {
		t.Errorf("Credential after a failed renewal = %v, %v, want iss_1", c, err)
	}
	clock.mu.Lock()
	clock.now = clock.now.Add(31 * time.Second)
	clock.mu.Unlock()
	if c, err := s.Credential(context.Background()); !errors.As(err, &be) || c != nil {
		t.Errorf("Credential after expiry = %v, %v, want Run's error", c, err)
	}
}

func TestRunFailsAtOnceOnPermanentFirstError(t *testing.T) {
	clock := newFakeClock()
	fb := newFakeBroker(t, errReply(401, CodeInvalidGrant, ""))
	s := newTestSource(t, fb, clock, 0.5, nil)
	err := s.Run(context.Background())
	if !IsPermanent(err) || !strings.Contains(err.Error(), "invalid_grant") {
		t.Fatalf("Run = %v, want invalid_grant", err)
	}
	if n := len(fb.sent()); n != 1 || len(clock.slept()) != 0 {
		t.Errorf("broker saw %d requests and the source slept %v, want 1 request and no retry", n, clock.slept())
	}
}

func TestCredentialWaitsForFirst(t *testing.T) {
	fb := newFakeBroker(t, errReply(503, CodeTemporarilyUnavailable, "1"), okReply("iss_1", 90))
	c, err := New(Options{Addr: fb.srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	s, err := NewSource(SourceOptions{Client: c, Grant: "g", Exchange: ExchangeOptions{Identity: staticIdentity("x")},
		// Sleep blocks until the test lets it go, so Credential must wait.
		Sleep: func(ctx context.Context, d time.Duration) error {
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	got := make(chan string, 1)
	go func() {
		c, err := s.Credential(context.Background())
		if err != nil {
			got <- err.Error()
			return
		}
		got <- c.IssuanceID
	}()
	release <- struct{}{} // end the backoff after the 503
	if g := <-got; g != "iss_1" {
		t.Errorf("Credential = %s, want iss_1", g)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run after cancel = %v, want nil", err)
	}
	if _, err := s.Credential(context.Background()); err != nil {
		t.Errorf("Credential after Run stopped with a valid credential = %v, want it", err)
	}
}

func TestNewSourceValidates(t *testing.T) {
	c, _ := New(Options{})
	id := ExchangeOptions{Identity: staticIdentity("x")}
	tests := []struct {
		name string
		o    SourceOptions
		want string
	}{
		{"fail/no-client", SourceOptions{Grant: "g", Exchange: id}, "Client is required"},
		{"fail/no-grant", SourceOptions{Client: c, Exchange: id}, "Grant is required"},
		{"fail/no-identity", SourceOptions{Client: c, Grant: "g"}, "Identity is required"},
		{"fail/renew-at-past-expiry", SourceOptions{Client: c, Grant: "g", Exchange: id, RenewAt: 0.95}, "must lie in (0, 1)"},
		{"fail/backoff-order", SourceOptions{Client: c, Grant: "g", Exchange: id, MinBackoff: time.Minute, MaxBackoff: time.Second}, "MinBackoff <= MaxBackoff"},
	}
	for _, tc := range tests {
		_, err := NewSource(tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewSource(%s) = %v, want error containing %q", tc.name, err, tc.want)
		}
	}
}

// A credential that is already over when it arrives (expires_in 0) is not
// published and is retried with the growing backoff, not every 100 ms:
// each retry is a new issuance (and, under exec --watch, a restart).
func TestRunBacksOffOnCredentialExpiredOnArrival(t *testing.T) {
	clock := newFakeClock()
	fb := newFakeBroker(t,
		okReply("iss_1", 90),
		okReply("iss_dead1", 0), okReply("iss_dead2", 0), okReply("iss_dead3", 0),
		okReply("iss_2", 90),
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got []string
	s := newTestSource(t, fb, clock, 0.5, func(o *SourceOptions) {
		o.OnCredential = func(c *Credential) error {
			got = append(got, c.IssuanceID)
			if len(got) == 2 {
				cancel()
			}
			return nil
		}
	})
	if err := s.Run(ctx); err != nil {
		t.Fatalf("Run = %v, want nil after cancellation", err)
	}
	if diff := cmp.Diff([]string{"iss_1", "iss_2"}, got); diff != "" {
		t.Errorf("credentials published (-want +got):\n%s", diff)
	}
	// Renewal at 60s, then the exponential backoff (rand 0.5: 3/4 of
	// 500ms, 1s, 2s), as after any transient failure.
	want := []time.Duration{60 * time.Second, 375 * time.Millisecond, 750 * time.Millisecond, 1500 * time.Millisecond}
	if diff := cmp.Diff(want, clock.slept()); diff != "" {
		t.Errorf("waits (-want +got):\n%s", diff)
	}
}

// A token file rewritten in place (truncate, then write: spiffe-helper)
// can be read empty; a renewal that reads it so retries with the backoff
// and keeps the last credential instead of ending Run for good.
func TestRunRidesOutTokenFileReadEmptyMidWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte("jwt-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	clock := newFakeClock()
	fb := newFakeBroker(t, okReply("iss_1", 90), okReply("iss_2", 90))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clock.onSleep = func(n int) {
		switch n {
		case 1: // the renewal is due: the writer has just truncated
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Error(err)
			}
		case 2: // the backoff after the empty read: the writer is done
			if err := os.WriteFile(path, []byte("jwt-2\n"), 0o600); err != nil {
				t.Error(err)
			}
		}
	}
	var got, retried []string
	s := newTestSource(t, fb, clock, 0.5, func(o *SourceOptions) {
		o.Exchange.Identity = FileIdentity{Path: path}
		o.OnCredential = func(c *Credential) error {
			got = append(got, c.IssuanceID)
			if len(got) == 2 {
				cancel()
			}
			return nil
		}
		o.OnRetry = func(err error, wait time.Duration) { retried = append(retried, err.Error()) }
	})
	if err := s.Run(ctx); err != nil {
		t.Fatalf("Run = %v, want nil after cancellation (the empty read retried)", err)
	}
	if diff := cmp.Diff([]string{"iss_1", "iss_2"}, got); diff != "" {
		t.Errorf("credentials (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"identity token from file " + path + ": empty"}, retried); diff != "" {
		t.Errorf("retries (-want +got):\n%s", diff)
	}
	var subjects []string
	for _, f := range fb.sent() {
		subjects = append(subjects, f.Get("subject_token"))
	}
	if diff := cmp.Diff([]string{"jwt-1", "jwt-2"}, subjects); diff != "" {
		t.Errorf("subject tokens sent (-want +got):\n%s", diff)
	}
}
