package vault

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/policies"
)

const (
	kvPath      = "secret/data/upstreams/stripe"
	kvRoute     = "GET /v1/" + kvPath
	kvValue     = "sk_live_kv_value_never_in_errors"
	kvOtherVal  = "sk_other_value_never_in_errors"
	kvFieldName = "api_key"
)

var kvRef = policies.ProxySecret{VaultKV: kvPath, Field: kvFieldName}

// kvBody is a KV v2 read answer holding data.
func kvBody(data map[string]any) map[string]any {
	return map[string]any{"data": map[string]any{
		"data":     data,
		"metadata": map[string]any{"version": 3, "created_time": "2026-03-01T12:00:00Z"},
	}}
}

// kvClock is a settable clock.
type kvClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *kvClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *kvClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newKV(t *testing.T, f *fakeVault, clk *kvClock) *KVSecrets {
	t.Helper()
	if clk == nil {
		clk = &kvClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	}
	kv, err := NewKVSecrets(KVOptions{Client: f.client(t), Now: clk.now})
	if err != nil {
		t.Fatalf("NewKVSecrets: %v", err)
	}
	return kv
}

func TestKVSecret(t *testing.T) {
	tests := []struct {
		name    string
		ref     policies.ProxySecret
		handler http.HandlerFunc
		want    string
		wantErr errShape
		calls   int
	}{
		{
			name: "ok/field",
			ref:  kvRef,
			handler: func(w http.ResponseWriter, r *http.Request) {
				reply(w, 200, kvBody(map[string]any{kvFieldName: kvValue, "other": kvOtherVal}))
			},
			want:  kvValue,
			calls: 1,
		},
		{
			name:    "fail/missing-path",
			ref:     kvRef,
			handler: replyRaw(404, `{"errors":[]}`),
			wantErr: errShape{Kind: "not found", Reason: ReasonSecretNotFound},
			calls:   1,
		},
		{
			name: "fail/deleted-version",
			ref:  kvRef,
			handler: func(w http.ResponseWriter, r *http.Request) {
				reply(w, 404, map[string]any{"data": map[string]any{"data": nil,
					"metadata": map[string]any{"version": 3, "deletion_time": "2026-03-01T12:00:00Z"}}})
			},
			wantErr: errShape{Kind: "not found", Reason: ReasonSecretNotFound},
			calls:   1,
		},
		{
			name: "fail/missing-field",
			ref:  kvRef,
			handler: func(w http.ResponseWriter, r *http.Request) {
				reply(w, 200, kvBody(map[string]any{"other": kvOtherVal}))
			},
			wantErr: errShape{Kind: "not found", Reason: ReasonSecretNotFound},
			calls:   1,
		},
		{
			name: "fail/field-not-string",
			ref:  kvRef,
			handler: func(w http.ResponseWriter, r *http.Request) {
				reply(w, 200, kvBody(map[string]any{kvFieldName: map[string]any{"nested": kvValue}}))
			},
			wantErr: errShape{Kind: unavailable, Reason: ReasonConfig},
			calls:   1,
		},
		{
			name: "fail/field-empty",
			ref:  kvRef,
			handler: func(w http.ResponseWriter, r *http.Request) {
				reply(w, 200, kvBody(map[string]any{kvFieldName: ""}))
			},
			wantErr: errShape{Kind: unavailable, Reason: ReasonConfig},
			calls:   1,
		},
		{
			name: "fail/not-kv-v2",
			ref:  kvRef,
			handler: func(w http.ResponseWriter, r *http.Request) {
				reply(w, 200, map[string]any{"data": map[string]any{kvFieldName: kvValue}})
			},
			wantErr: errShape{Kind: unavailable, Reason: ReasonBadResponse},
			calls:   1,
		},
		{
			name:    "fail/denied",
			ref:     kvRef,
			handler: replyRaw(403, `{"errors":["1 error occurred:\n\t* permission denied\n\n"]}`),
			wantErr: errShape{Kind: unavailable, Reason: ReasonDenied},
			calls:   1,
		},
		{
			name:    "fail/sealed",
			ref:     kvRef,
			handler: replyRaw(503, `{"errors":["Vault is sealed"]}`),
			wantErr: errShape{Kind: unavailable, Reason: ReasonUnavailable},
			calls:   1,
		},
		{
			name:    "fail/no-field-in-ref",
			ref:     policies.ProxySecret{VaultKV: kvPath},
			wantErr: errShape{Kind: unavailable, Reason: ReasonConfig},
			calls:   0,
		},
		{
			name:    "fail/absolute-path-in-ref",
			ref:     policies.ProxySecret{VaultKV: "/" + kvPath, Field: kvFieldName},
			wantErr: errShape{Kind: unavailable, Reason: ReasonConfig},
			calls:   0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			routes := map[string]http.HandlerFunc{}
			if tt.handler != nil {
				routes[kvRoute] = tt.handler
			}
			f := newFakeVault(t, routes)
			kv := newKV(t, f, nil)
			got, err := kv.Secret(context.Background(), tt.ref)
			if got != tt.want {
				t.Errorf("Secret(%+v) value mismatch (len %d, want len %d)", tt.ref, len(got), len(tt.want))
			}
			if diff := cmp.Diff(tt.wantErr, shapeOf(err)); diff != "" {
				t.Errorf("Secret(%+v) error = %v, want %+v (-want +got):\n%s", tt.ref, err, tt.wantErr, diff)
			}
			if err != nil && (strings.Contains(err.Error(), kvValue) || strings.Contains(err.Error(), kvOtherVal)) {
				t.Errorf("Secret(%+v) error contains a secret value: %v", tt.ref, err)
			}
			if n := f.total(); n != tt.calls {
				t.Errorf("Vault calls = %d, want %d", n, tt.calls)
			}
		})
	}
}

func TestKVSecretCacheAndRefresh(t *testing.T) {
	var current atomic.Value
	current.Store(kvValue)
	f := newFakeVault(t, map[string]http.HandlerFunc{
		kvRoute: func(w http.ResponseWriter, r *http.Request) {
			reply(w, 200, kvBody(map[string]any{kvFieldName: current.Load().(string)}))
		},
	})
	clk := &kvClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	kv := newKV(t, f, clk)
	ctx := context.Background()

	type step struct {
		name      string
		advance   time.Duration
		rotate    string
		want      string
		wantCalls int
	}
	steps := []step{
		{name: "ok/first-read", want: kvValue, wantCalls: 1},
		{name: "ok/cached", advance: 10 * time.Second, want: kvValue, wantCalls: 1},
		{name: "ok/cached-after-rotation-within-ttl", advance: 19 * time.Second, rotate: "sk_rotated", want: kvValue, wantCalls: 1},
		{name: "ok/refreshed-at-ttl", advance: time.Second, want: "sk_rotated", wantCalls: 2},
		{name: "ok/cached-again", advance: 29 * time.Second, want: "sk_rotated", wantCalls: 2},
	}
	for _, s := range steps {
		clk.advance(s.advance)
		if s.rotate != "" {
			current.Store(s.rotate)
		}
		got, err := kv.Secret(ctx, kvRef)
		if err != nil {
			t.Fatalf("%s: Secret = %v", s.name, err)
		}
		if got != s.want {
			t.Errorf("%s: Secret returned the wrong value (len %d)", s.name, len(got))
		}
		if n := f.count(kvRoute); n != s.wantCalls {
			t.Errorf("%s: Vault reads = %d, want %d", s.name, n, s.wantCalls)
		}
	}

	// A different field of the same path is its own entry.
	other := kvRef
	other.Field = "other"
	if _, err := kv.Secret(ctx, other); err == nil {
		t.Errorf("Secret(other field) = nil error, want not found")
	}
	if n := f.count(kvRoute); n != 3 {
		t.Errorf("Vault reads after other field = %d, want 3", n)
	}
}

func TestKVSecretErrorsAreNotCached(t *testing.T) {
	var fail atomic.Bool
	fail.Store(true)
	f := newFakeVault(t, map[string]http.HandlerFunc{
		kvRoute: func(w http.ResponseWriter, r *http.Request) {
			if fail.Load() {
				replyRaw(503, `{"errors":["Vault is sealed"]}`)(w, r)
				return
			}
			reply(w, 200, kvBody(map[string]any{kvFieldName: kvValue}))
		},
	})
	kv := newKV(t, f, nil)
	if _, err := kv.Secret(context.Background(), kvRef); err == nil {
		t.Fatalf("Secret during outage = nil error, want unavailable")
	}
	fail.Store(false)
	got, err := kv.Secret(context.Background(), kvRef)
	if err != nil || got != kvValue {
		t.Fatalf("Secret after outage = (len %d, %v), want the value", len(got), err)
	}
	if n := f.count(kvRoute); n != 2 {
		t.Errorf("Vault reads = %d, want 2 (the failure is not cached)", n)
	}
}

func TestKVSecretSharesOneRead(t *testing.T) {
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	f := newFakeVault(t, map[string]http.HandlerFunc{
		kvRoute: func(w http.ResponseWriter, r *http.Request) {
			select {
			case started <- struct{}{}:
			default:
			}
			<-release
			reply(w, 200, kvBody(map[string]any{kvFieldName: kvValue}))
		},
	})
	kv := newKV(t, f, nil)

	// A caller that gives up gets an error without cancelling the read.
	cctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := kv.Secret(cctx, kvRef)
		errc <- err
	}()
	<-started
	cancel()
	if err := <-errc; shapeOf(err) != (errShape{Kind: unavailable, Reason: ReasonUnavailable}) {
		t.Errorf("Secret(cancelled ctx) = %v, want unavailable", err)
	}

	const n = 8
	var wg sync.WaitGroup
	results := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := kv.Secret(context.Background(), kvRef)
			if err != nil {
				t.Errorf("Secret = %v", err)
			}
			results[i] = v
		}()
	}
	close(release)
	wg.Wait()
	for i, v := range results {
		if v != kvValue {
			t.Errorf("caller %d got the wrong value (len %d)", i, len(v))
		}
	}
	if c := f.count(kvRoute); c != 1 {
		t.Errorf("Vault reads = %d, want 1 shared read", c)
	}
}

func TestNewKVSecretsValidates(t *testing.T) {
	_, err := NewKVSecrets(KVOptions{TTL: -time.Second})
	if err == nil {
		t.Fatalf("NewKVSecrets(no client, negative ttl) = nil error")
	}
	for _, want := range []string{"client is required", "ttl must not be negative"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("NewKVSecrets error = %q, want it to mention %q", err, want)
		}
	}
}

// CachedSecret answers what Secret holds in memory, and nothing else: no
// entry, an expired one and a failed read are for Secret (and Vault).
func TestKVCachedSecret(t *testing.T) {
	fail := atomic.Bool{}
	f := newFakeVault(t, map[string]http.HandlerFunc{
		kvRoute: func(w http.ResponseWriter, r *http.Request) {
			if fail.Load() {
				reply(w, 503, map[string]any{"errors": []string{"sealed"}})
				return
			}
			reply(w, 200, kvBody(map[string]any{kvFieldName: kvValue}))
		},
	})
	clk := &kvClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	kv := newKV(t, f, clk)
	ctx := context.Background()

	if _, ok := kv.CachedSecret(kvRef); ok {
		t.Fatal("CachedSecret before any read = ok")
	}
	if _, err := kv.Secret(ctx, kvRef); err != nil {
		t.Fatal(err)
	}
	if v, ok := kv.CachedSecret(kvRef); !ok || v != kvValue {
		t.Errorf("CachedSecret after a read = (len %d, %v), want the value", len(v), ok)
	}
	other := kvRef
	other.Field = "other"
	if _, ok := kv.CachedSecret(other); ok {
		t.Error("CachedSecret(other field) = ok")
	}
	clk.advance(DefaultKVTTL)
	if _, ok := kv.CachedSecret(kvRef); ok {
		t.Error("CachedSecret of an expired entry = ok")
	}
	fail.Store(true)
	if _, err := kv.Secret(ctx, kvRef); err == nil {
		t.Fatal("Secret with Vault failing = nil error")
	}
	if _, ok := kv.CachedSecret(kvRef); ok {
		t.Error("CachedSecret after a failed read = ok")
	}
	if n := f.count(kvRoute); n != 2 {
		t.Errorf("Vault reads = %d, want 2 (CachedSecret reads none)", n)
	}
}
