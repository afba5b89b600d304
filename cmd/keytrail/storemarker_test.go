package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
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
	before := memstore.New(time.Now)
	if checkStoreMarker(ctx, path, before, log) {
		t.Fatal("first start: loss reported")
	}
	if checkStoreMarker(ctx, path, before, log) {
		t.Fatal("restart on the same store: loss reported")
	}
	if strings.Contains(logs.String(), "ERROR") {
		t.Fatalf("no loss, but logged:\n%s", logs.String())
	}
	after := memstore.New(time.Now) // the store lost its data: a new deployment id
	if !checkStoreMarker(ctx, path, after, log) {
		t.Fatal("start after the store lost its data: no loss reported")
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "lost data while no instance ran through it") {
		t.Errorf("logged:\n%s", logs.String())
	}
	if checkStoreMarker(ctx, path, after, log) {
		t.Error("the next restart reported the same loss again")
	}
	id, _ := after.DeploymentID(ctx)
	if raw, err := os.ReadFile(path); err != nil || strings.TrimSpace(string(raw)) != id {
		t.Errorf("%s holds %q, %v; want %s", path, raw, err, id)
	}
}
