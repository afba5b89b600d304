package main

import (
	"context"
	"errors"

	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

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
// reports true, once: path then holds the new id. A first start (no file)
// reports nothing and writes it. A failure to read the store or the file
// is logged at WARN and checks nothing: the start-up goes on.
func checkStoreMarker(ctx context.Context, path string, st broker.Store, log *slog.Logger) bool {
	id, err := st.DeploymentID(ctx)
	if err != nil {
		log.LogAttrs(ctx, slog.LevelWarn, "store data-loss check: reading the store's deployment id failed; not checked",
			slog.String("error", err.Error()))
		return false
	}
	raw, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.LogAttrs(ctx, slog.LevelWarn, "store data-loss check: reading "+path+" failed; not checked", slog.String("error", err.Error()))
		return false
	}
	was := strings.TrimSpace(string(raw))
	if was == id {
		return false
	}
	if werr := writeAtomic(path, []byte(id+"\n")); werr != nil {
		log.LogAttrs(ctx, slog.LevelWarn, "store data-loss check: keeping the store's deployment id failed", slog.String("error", werr.Error()))
	}
	if err != nil { // first start with this audit log
		return false
	}
	log.LogAttrs(ctx, slog.LevelError, "revocation store lost data while no instance ran through it "+
		"(its deployment id is not the one this instance last started with: Redis restarted without persistence, "+
		"flushed, or restored from before the id was made; or another Redis or prefix is configured): the blocks and "+
		"revocations made before may be gone; block again what the audit log shows blocked (docs/RELIABILITY.md)",
		slog.String("seen_by", "store deployment id changed"), slog.String("deployment_id_was", was), slog.String("deployment_id", id))
	return true
}
