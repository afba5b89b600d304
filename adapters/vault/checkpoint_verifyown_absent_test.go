package vault

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker/brokertest"
)

// TestTransitCheckpointSignerVerifyOwnLogsAbsentVersion: a checkpoint
// naming a version of the transit key that Vault no longer lists (below
// min_decryption_version: no public key is served) cannot be checked;
// VerifyOwn answers "unknown", so the sink counts the checkpoint among the
// lines it adopts. It said nothing of why; it now logs a WARN naming the
// version.
func TestTransitCheckpointSignerVerifyOwnLogsAbsentVersion(t *testing.T) {
	t.Parallel()
	key := newFakeKey(t, KeyTypeEd25519, 3)
	key.minDec = 2 // version 1 is not listed
	f := newFakeVault(t, fakeTransit(t, "audit-cp", key, nil))
	var logs brokertest.SyncBuffer
	s, err := NewTransitCheckpointSigner(TransitCheckpointSignerOptions{Client: f.client(t), Key: "audit-cp",
		Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if known, good := s.VerifyOwn(ctx, kid("audit-cp", 1), cpMsg, make([]byte, 64)); known || good {
		t.Fatalf("VerifyOwn(version below min_decryption_version) = %v, %v; want false, false", known, good)
	}
	got := logs.String()
	for _, want := range []string{"level=WARN", "key=audit-cp", "kid=audit-cp:1", "version=1", "min_decryption_version=2"} {
		if !strings.Contains(got, want) {
			t.Errorf("VerifyOwn(absent version) logged %q, want it to contain %q", got, want)
		}
	}
	// The broker itself drops the versions below min_decryption_version
	// (parseTransitKey): the WARN must not say Vault does not list it.
	if !strings.Contains(got, "below the key's min_decryption_version") || strings.Contains(got, "Vault lists") {
		t.Errorf("VerifyOwn(absent version) logged %q, want it to say the version is below min_decryption_version, not that Vault does not list it", got)
	}
	if strings.Contains(got, brokerToken) {
		t.Errorf("VerifyOwn logged the token: %q", got)
	}
}

// TestTransitCheckpointSignerVerifyOwnLogsAfterLatest: a checkpoint naming
// a version after the key's latest cannot have been signed by it (a forged
// line); VerifyOwn answers known and not good, and it said nothing. It now
// logs a WARN naming the kid, once per kid and for at most
// maxAfterLatestWarns kids (a forger picks them).
func TestTransitCheckpointSignerVerifyOwnLogsAfterLatest(t *testing.T) {
	t.Parallel()
	key := newFakeKey(t, KeyTypeEd25519, 2)
	f := newFakeVault(t, fakeTransit(t, "audit-cp", key, nil))
	var logs brokertest.SyncBuffer
	s, err := NewTransitCheckpointSigner(TransitCheckpointSignerOptions{Client: f.client(t), Key: "audit-cp",
		Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Load(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if known, good := s.VerifyOwn(ctx, kid("audit-cp", 3), cpMsg, make([]byte, 64)); !known || good {
			t.Fatalf("VerifyOwn(version after latest) = %v, %v; want true, false", known, good)
		}
	}
	got := logs.String()
	for _, want := range []string{"level=WARN", "after its latest", "key=audit-cp", "kid=audit-cp:3", "version=3", "latest_version=2"} {
		if !strings.Contains(got, want) {
			t.Errorf("VerifyOwn(version after latest) logged %q, want it to contain %q", got, want)
		}
	}
	if n := strings.Count(got, "level=WARN"); n != 1 {
		t.Errorf("VerifyOwn twice for one kid logged %d WARNs, want 1", n)
	}
	for v := 4; v < 4+3*maxAfterLatestWarns; v++ {
		s.VerifyOwn(ctx, kid("audit-cp", v), cpMsg, make([]byte, 64))
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != maxAfterLatestWarns {
		t.Errorf("VerifyOwn for %d kids after latest logged %d WARNs, want %d", 1+3*maxAfterLatestWarns, n, maxAfterLatestWarns)
	}
	if strings.Contains(logs.String(), brokerToken) {
		t.Errorf("VerifyOwn logged the token: %q", logs.String())
	}
}
