package vault

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/brokertest"
)

// TestTransitCheckpointSignerVerifyOwnLogsUnreachable: when the key's
// public keys cannot be read (Vault unreachable once the cache ran out),
// VerifyOwn answers "unknown", so the sink counts the checkpoint among
// the lines it adopts; it said nothing of why. It now logs a WARN naming
// the key and kid, without the token or any key material.
func TestTransitCheckpointSignerVerifyOwnLogsUnreachable(t *testing.T) {
	t.Parallel()
	key := newFakeKey(t, KeyTypeEd25519, 2)
	f := newFakeVault(t, fakeTransit(t, "audit-cp", key, nil))
	var mu sync.Mutex
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	var logs brokertest.SyncBuffer
	s, err := NewTransitCheckpointSigner(TransitCheckpointSignerOptions{Client: f.client(t), Key: "audit-cp", Now: clock,
		Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Load(ctx); err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64) // not checked: the keys cannot be read
	f.srv.Close()           // Vault unreachable
	mu.Lock()
	now = now.Add(DefaultKeyRefresh + time.Second)
	mu.Unlock()
	if known, good := s.VerifyOwn(ctx, kid("audit-cp", 2), cpMsg, sig); known || good {
		t.Fatalf("VerifyOwn with Vault unreachable = %v, %v; want false, false", known, good)
	}
	got := logs.String()
	for _, want := range []string{"level=WARN", "key=audit-cp", "kid=audit-cp:2"} {
		if !strings.Contains(got, want) {
			t.Errorf("VerifyOwn with Vault unreachable logged %q, want it to contain %q", got, want)
		}
	}
	if strings.Contains(got, brokerToken) {
		t.Errorf("VerifyOwn logged the token: %q", got)
	}
}
