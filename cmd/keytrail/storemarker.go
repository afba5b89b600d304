package main

import (
	"context"
	"errors"

	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// storeMarkerPath is where an instance keeps the deployment id of the
// shared store it last started with: next to its audit log (which must
// outlive a restart), hidden like the audit journal so that `audit.jsonl*`
// does not match it.
func storeMarkerPath(auditFile string) string {
	dir, base := filepath.Split(auditFile)
	return filepath.Join(dir, "."+base+".store")
}

// checkStoreMarker tells a shared store that lost its data while no
// instance ran through it (every instance restarted after Redis lost it,
// or one restarted together with Redis): the running instances' revocation
// cache sees a loss, but an instance that starts after it finds an empty
// store and nothing to compare with. The store's deployment id
// (broker.Store.DeploymentID) lasts as long as its data and is created
// anew by the first caller after a loss; this instance keeps the one it
// last started with in path. A different one now (or, created by this
// call, a new one) means the store's data is not the data this instance
// used: lost (or another Redis or prefix configured). It logs an ERROR and
// reports true. A first start (no file) reports nothing. keep, when not
// nil, writes the id into path: the caller calls it once the start-up
// succeeded (its start event durable), so that a start-up failing after
// this check (Vault down in a crash loop) leaves path as it was and the
// next attempt reports the loss again, until one runs; the loss is then
// reported once. A failure to read the store or the file is logged at WARN
// and checks nothing: the start-up goes on. id is the store's deployment
// id ("" when it could not be read), which keepStoreID keeps through a
// loss this instance runs through.
func checkStoreMarker(ctx context.Context, path string, st broker.Store, log *slog.Logger) (lost bool, id string, keep func()) {
	id, err := st.DeploymentID(ctx)
	if err != nil {
		log.LogAttrs(ctx, slog.LevelWarn, "store data-loss check: reading the store's deployment id failed; not checked",
			slog.String("error", err.Error()))
		return false, "", nil
	}
	raw, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.LogAttrs(ctx, slog.LevelWarn, "store data-loss check: reading "+path+" failed; not checked", slog.String("error", err.Error()))
		return false, id, nil
	}
	was := strings.TrimSpace(string(raw))
	if was == id {
		return false, id, nil
	}
	keep = func() {
		if werr := writeAtomic(path, []byte(id+"\n")); werr != nil {
			log.LogAttrs(ctx, slog.LevelWarn, "store data-loss check: keeping the store's deployment id failed", slog.String("error", werr.Error()))
		}
	}
	if err != nil { // first start with this audit log
		return false, id, keep
	}
	log.LogAttrs(ctx, slog.LevelError, "revocation store lost data while no instance ran through it "+
		"(its deployment id is not the one this instance last started with: Redis restarted without persistence, "+
		"flushed, or restored from before the id was made; or another Redis or prefix is configured): the blocks and "+
		"revocations made before may be gone; block again what the audit log shows blocked (docs/RELIABILITY.md)",
		slog.String("seen_by", "store deployment id changed"), slog.String("deployment_id_was", was), slog.String("deployment_id", id))
	return true, id, keep
}

// deploymentKeeper is a shared store that can put its deployment id back
// after a loss (redisstore.Store.KeepDeploymentID).
type deploymentKeeper interface {
	KeepDeploymentID(ctx context.Context, id string) (string, error)
}

// keepStoreID keeps the store's deployment id through a loss this instance
// runs through: at each tick after losses (the revocation cache's count)
// went up, it puts id back into the store (the cache writes back the
// blocks and revocations; without the id, the next instance to start
// would create a new one, and every instance that ran through the loss
// would report it at its next start as one no instance ran through), and
// keeps in path the id stored (another instance may have created a new
// one first). A failure is logged at WARN (once while it lasts) and tried again at
// the next tick.
func keepStoreID(ctx context.Context, tick <-chan time.Time, losses func() uint64, k deploymentKeeper, id, path string, log *slog.Logger) error {
	seen, failing := losses(), false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick:
		}
		n := losses()
		if n == seen {
			continue
		}
		got, err := k.KeepDeploymentID(ctx, id)
		if err != nil {
			if !failing { // once, not every second while the store is down
				log.LogAttrs(ctx, slog.LevelWarn, "store data-loss: putting the store's deployment id back failed; trying again every second",
					slog.String("error", err.Error()))
			}
			failing = true
			continue
		}
		seen, failing = n, false
		if got == id {
			continue
		}
		id = got
		if err := writeAtomic(path, []byte(id+"\n")); err != nil {
			log.LogAttrs(ctx, slog.LevelWarn, "store data-loss: keeping the store's deployment id failed", slog.String("error", err.Error()))
		}
	}
}
