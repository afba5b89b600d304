package memstore_test

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/adapters/storetest"
	"github.com/keytrail/keytrail/broker"
)

func TestNotifier(t *testing.T) {
	n := memstore.NewNotifier()
	ctx, cancel := context.WithCancel(context.Background())
	a, err := n.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := n.Subscribe(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := broker.Notice{RevocationID: "rev_1", Revoked: []string{"iss_1"}, Blocked: []string{"w"}}
	if err := n.Publish(context.Background(), want); err != nil {
		t.Fatal(err)
	}
	want.Revoked[0] = "changed-after-publish"
	for name, ch := range map[string]<-chan broker.Notice{"a": a, "b": b} {
		got := <-ch
		if diff := cmp.Diff(broker.Notice{RevocationID: "rev_1", Revoked: []string{"iss_1"}, Blocked: []string{"w"}}, got); diff != "" {
			t.Errorf("subscriber %s got (-want +got):\n%s", name, diff)
		}
	}
	cancel()
	if _, ok := <-a; ok {
		t.Errorf("subscription still open after its ctx ended")
	}
	// A full subscriber does not block the publisher.
	for range 200 {
		if err := n.Publish(context.Background(), broker.Notice{RevocationID: "rev_x"}); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(b); got != 64 {
		t.Errorf("buffered notices = %d, want 64 (the rest dropped)", got)
	}
}

func TestNotifierContract(t *testing.T) {
	storetest.RunNotifier(t, func(t *testing.T) broker.Notifier { return memstore.NewNotifier() })
}
