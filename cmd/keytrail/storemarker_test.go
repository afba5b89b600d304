package main

import (
	"bytes"
	"context"
	"errors"
	"github.com/keytrail/keytrail/broker"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
)

// A store that lost its data while no instance ran through it is told at
// the next start of an instance that used it (its deployment id changed),
// once; a first start and a restart on the same store are not.
func TestCheckStoreMarker(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := storeMarkerPath(filepath.Join(dir, "audit.jsonl"))
	if want := filepath.Join(dir, ".audit.jsonl.store"); path != want {
		t.Fatalf("storeMarkerPath = %s, want %s", path, want)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	// check is a start-up that succeeds: the marker is written once its
	// start event is durable.
	check := func(st broker.Store) bool {
		t.Helper()
		lost, _, keep := checkStoreMarker(ctx, path, st, log)
		if keep != nil {
			keep()
		}
		return lost
	}
	before := memstore.New(time.Now)
	if check(before) {
		t.Fatal("first start: loss reported")
	}
	if check(before) {
		t.Fatal("restart on the same store: loss reported")
	}
	if strings.Contains(logs.String(), "ERROR") {
		t.Fatalf("no loss, but logged:\n%s", logs.String())
	}
	after := memstore.New(time.Now) // the store lost its data: a new deployment id
	// A start-up that fails after the check (Vault down, a crash loop)
	// does not write the marker: the next attempt reports the loss again,
	// so that the instance that finally runs counts it.
	for attempt := 1; attempt <= 2; attempt++ {
		if lost, _, _ := checkStoreMarker(ctx, path, after, log); !lost {
			t.Fatalf("attempt %d after the store lost its data (earlier attempts failed): no loss reported", attempt)
		}
	}
	if !check(after) {
		t.Fatal("start after the store lost its data: no loss reported")
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "lost data while no instance ran through it") {
		t.Errorf("logged:\n%s", logs.String())
	}
	if check(after) {
		t.Error("the next restart reported the same loss again")
	}
	id, _ := after.DeploymentID(ctx)
	if raw, err := os.ReadFile(path); err != nil || strings.TrimSpace(string(raw)) != id {
		t.Errorf("%s holds %q, %v; want %s", path, raw, err, id)
	}
}

type fakeKeeper struct {
	calls chan string
	reply func(id string) (string, error)
}

func (k *fakeKeeper) KeepDeploymentID(_ context.Context, id string) (string, error) {
	k.calls <- id
	return k.reply(id)
}

// After the revocation cache counts a loss, the store's deployment id is
// put back (and tried again when that fails); an id another instance
// created first is kept in the marker instead.
func TestKeepStoreID(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	path := filepath.Join(t.TempDir(), ".audit.jsonl.store")
	if err := os.WriteFile(path, []byte("dep_a\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var losses atomic.Uint64
	tick := make(chan time.Time)
	replies := make(chan func(string) (string, error), 3)
	k := &fakeKeeper{calls: make(chan string, 3), reply: func(id string) (string, error) { return (<-replies)(id) }}
	done := make(chan error)
	go func() {
		done <- keepStoreID(ctx, tick, losses.Load, k, "dep_a", path, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	tick <- time.Time{}
	tick <- time.Time{} // no loss: not called
	losses.Add(1)
	replies <- func(string) (string, error) { return "", errors.New("store down") }
	replies <- func(string) (string, error) { return "dep_b", nil } // another instance was first
	tick <- time.Time{}
	tick <- time.Time{}
	tick <- time.Time{} // the loss is handled: not called again
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	close(k.calls)
	var calls []string
	for id := range k.calls {
		calls = append(calls, id)
	}
	if !slices.Equal(calls, []string{"dep_a", "dep_a"}) {
		t.Errorf("KeepDeploymentID calls = %v, want [dep_a dep_a] (one failed, tried again)", calls)
	}
	if raw, err := os.ReadFile(path); err != nil || string(raw) != "dep_b\n" {
		t.Errorf("%s holds %q, %v; want dep_b, the id stored", path, raw, err)
	}
}
