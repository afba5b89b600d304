package vault

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// healthWithDate answers sys/health with the given Date header ("" omits
// it), checking the query that makes every node answer 200.
func healthWithDate(t *testing.T, date string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("standbyok") != "true" || q.Get("sealedcode") != "200" {
			t.Errorf("sys/health query = %s, want standbyok and sealedcode=200", r.URL.RawQuery)
		}
		if date == "" {
			w.Header()["Date"] = nil // net/http adds none then
		} else {
			w.Header().Set("Date", date)
		}
		reply(w, 200, map[string]any{"initialized": true, "sealed": false, "standby": false})
	}
}

func TestClockOffset(t *testing.T) {
	local := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	now := func() time.Time { return local }
	httpDate := func(d time.Duration) string { return local.Add(d).Format(http.TimeFormat) }
	cases := []struct {
		name      string
		date      string
		want      time.Duration
		wantSkew  bool
		wantError errShape
	}{
		{"ok/in-step", httpDate(0), 500 * time.Millisecond, false, errShape{}},
		{"ok/vault-ahead-within", httpDate(time.Second), 1500 * time.Millisecond, false, errShape{}},
		{"ok/vault-behind-within", httpDate(-2 * time.Second), -1500 * time.Millisecond, false, errShape{}},
		{"skew/vault-ahead", httpDate(10 * time.Second), 10500 * time.Millisecond, true, errShape{}},
		{"skew/vault-behind", httpDate(-3 * time.Second), -2500 * time.Millisecond, true, errShape{}},
		{"skew/vault-hours-behind", httpDate(-2 * time.Hour), -2*time.Hour + 500*time.Millisecond, true, errShape{}},
		{"fail/no-date", "", 0, false, errShape{unavailable, ReasonBadResponse}},
		{"fail/bad-date", "yesterday-ish", 0, false, errShape{unavailable, ReasonBadResponse}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fv := newFakeVault(t, map[string]http.HandlerFunc{"GET /v1/sys/health": healthWithDate(t, tc.date)})
			var skews []time.Duration
			var measured []time.Duration
			w, err := NewClockWatch(ClockWatchOptions{Client: fv.client(t), Now: now,
				OnSkew:    func(ctx context.Context, off time.Duration) { skews = append(skews, off) },
				OnMeasure: func(off time.Duration) { measured = append(measured, off) }})
			if err != nil {
				t.Fatal(err)
			}
			got, err := w.Check(context.Background())
			if diff := cmp.Diff(tc.wantError, shapeOf(err)); diff != "" {
				t.Fatalf("Check(%s) error = got, want want (-want +got):\n%s", tc.name, diff)
			}
			if got != tc.want {
				t.Errorf("Check(%s) = %v, want %v", tc.name, got, tc.want)
			}
			var wantSkews, wantMeasured []time.Duration
			if tc.wantSkew {
				wantSkews = []time.Duration{tc.want}
			}
			if tc.wantError == (errShape{}) {
				wantMeasured = []time.Duration{tc.want}
			}
			if diff := cmp.Diff(wantSkews, skews); diff != "" {
				t.Errorf("Check(%s) OnSkew calls = got, want want (-want +got):\n%s", tc.name, diff)
			}
			if diff := cmp.Diff(wantMeasured, measured); diff != "" {
				t.Errorf("Check(%s) OnMeasure calls = got, want want (-want +got):\n%s", tc.name, diff)
			}
		})
	}
}

func TestClockOffsetVaultDown(t *testing.T) {
	fv := newFakeVault(t, nil)
	c := fv.client(t)
	fv.srv.Close()
	_, err := ClockOffset(context.Background(), c, nil)
	if diff := cmp.Diff(errShape{unavailable, ReasonUnavailable}, shapeOf(err)); diff != "" {
		t.Errorf("ClockOffset(vault down) = got, want want (-want +got):\n%s", diff)
	}
	if _, err := ClockOffset(context.Background(), nil, nil); err == nil {
		t.Errorf("ClockOffset(nil client) = nil error, want an error")
	}
}

func TestClockWatchRun(t *testing.T) {
	local := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	fv := newFakeVault(t, map[string]http.HandlerFunc{"GET /v1/sys/health": healthWithDate(t, local.Add(30*time.Second).Format(http.TimeFormat))})
	var mu sync.Mutex
	var skews []time.Duration
	got := make(chan struct{}, 10)
	w, err := NewClockWatch(ClockWatchOptions{Client: fv.client(t), Interval: 5 * time.Millisecond, Now: func() time.Time { return local },
		OnSkew: func(ctx context.Context, off time.Duration) {
			mu.Lock()
			skews = append(skews, off)
			mu.Unlock()
			got <- struct{}{}
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for range 3 { // the first check at once, then on the ticker
		select {
		case <-got:
		case <-timeout.C:
			t.Fatal("Run: OnSkew was not called 3 times within 10s")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run() = %v, want nil when ctx ends", err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, s := range skews {
		if s != 30500*time.Millisecond {
			t.Errorf("Run: OnSkew(%v), want 30.5s", s)
		}
	}

	for _, o := range []ClockWatchOptions{{}, {Client: fv.client(t)}, {Client: fv.client(t), OnSkew: func(context.Context, time.Duration) {}, Interval: -1}} {
		if _, err := NewClockWatch(o); err == nil {
			t.Errorf("NewClockWatch(%+v) = nil error, want an error", o)
		}
	}
}
