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
	if strings.Contains(got, brokerToken) {
		t.Errorf("VerifyOwn logged the token: %q", got)
	}
}
