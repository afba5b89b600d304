package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"

	vaultad "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// Reconciliation tuning, from the environment (defaults in parentheses):
// KEYTRAIL_RECONCILE_INTERVAL (5m) between runs after the one at start-up,
// KEYTRAIL_RECONCILE_GRACE (1m) during which a fresh credential is left
// alone, KEYTRAIL_RECONCILE=off to disable it.
const (
	envReconcile         = "KEYTRAIL_RECONCILE"
	envReconcileInterval = "KEYTRAIL_RECONCILE_INTERVAL"
	envReconcileGrace    = "KEYTRAIL_RECONCILE_GRACE"
)

// graceFloor is the shortest safe reconciliation grace: an exchange's
// Vault token is durably recorded (store write, then issue event) within
// its create call (vault.timeout, or the broker's mint timeout if that is
// longer) plus the store and audit timeouts of its creation, or never; 2s
// more cover Vault's creation_time, which is in whole seconds. A shorter
// grace lets a run revoke a token whose exchange is still recording it
// (no_record, or not_audited while its issue event is pending), and the
// workload is handed a revoked token.
func graceFloor(vaultTimeout time.Duration, t broker.Timeouts) time.Duration {
	return max(vaultTimeout, t.Mint) + t.Store + t.Audit + 2*time.Second
}

// reconcileTuning reads KEYTRAIL_RECONCILE_INTERVAL and
// KEYTRAIL_RECONCILE_GRACE (interval 0: the Reconciler's default). A
// grace, set or the default, shorter than floor (graceFloor) is raised to
// floor, and warn says so, naming the variable.
func reconcileTuning(getenv func(string) string, floor time.Duration) (interval, grace time.Duration, warn string, err error) {
	// "off" turns it off (the caller checks that first); any other word
	// (false, 0, no, a typo) would have left it on without a word.
	if v := getenv(envReconcile); v != "" && !strings.EqualFold(v, "on") && !strings.EqualFold(v, "off") {
		return 0, 0, "", fmt.Errorf("%s=%q: only \"off\" turns the reconciliation off (unset or \"on\": on)", envReconcile, v)
	}
	for _, p := range []struct {
		name string
		dst  *time.Duration
	}{{envReconcileInterval, &interval}, {envReconcileGrace, &grace}} {
		if v := getenv(p.name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return 0, 0, "", fmt.Errorf("%s: %q is not a positive duration like 30s or 5m", p.name, v)
			}
			*p.dst = d
		}
	}
	set := grace != 0
	if !set {
		grace = broker.DefaultReconcileGrace
	}
	if grace < floor {
		what := envReconcileGrace + "=" + getenv(envReconcileGrace)
		if !set {
			what = "the default " + envReconcileGrace + " (" + grace.String() + ")"
		}
		warn = fmt.Sprintf("%s is shorter than %s, the longest an exchange may take from its Vault create call to its durable record "+
			"(vault.timeout or the mint timeout, whichever is longer, + store and audit timeouts + 2s): using %s, "+
			"as a shorter grace could revoke a token still being recorded", what, floor, floor)
		grace = floor
	}
	return interval, grace, warn, nil
}

// checkReconcileEnv is reconcileTuning's refusal of KEYTRAIL_RECONCILE,
// KEYTRAIL_RECONCILE_INTERVAL and KEYTRAIL_RECONCILE_GRACE, without the
// grace floor (which needs the wired broker and only warns): the server and
// dev call it before anything starts, rather than after the Vault login,
// and config check reports it as a problem. With KEYTRAIL_RECONCILE=off the
// other two are not read, as startReconciler does not read them.
func checkReconcileEnv(getenv func(string) string) error {
	if strings.EqualFold(getenv(envReconcile), "off") {
		return nil
	}
	_, _, _, err := reconcileTuning(getenv, 0)
	return err
}

// startReconciler runs the Vault token reconciliation (broker.Reconciler)
// at start-up and periodically, in the background.
func (rt *brokerRuntime) startReconciler(ctx context.Context, e *env) error {
	if strings.EqualFold(e.getenv(envReconcile), "off") {
		rt.log.Warn("reconciliation disabled by " + envReconcile)
		return nil
	}
	floor := graceFloor(time.Duration(rt.cfg.Vault.Timeout), rt.svc.Timeouts())
	interval, grace, warn, err := reconcileTuning(e.getenv, floor)
	if err != nil {
		return err
	}
	if warn != "" {
		rt.log.Warn(warn, slog.Duration("grace", grace), slog.Duration("vault_timeout", time.Duration(rt.cfg.Vault.Timeout)))
	}
	inv, err := vaultad.NewTokenInventory(vaultad.TokenInventoryOptions{Client: rt.vault, Deployment: rt.deployment})
	if err != nil {
		return err
	}
	rec, err := broker.NewReconciler(broker.ReconcilerOptions{
		Source: inv, Store: rt.store, Audit: rt.sink,
		Issued: newAuditIssueIndex(rt.cfg.Audit.File),
		// Only a single instance's log sees every issue event; with Redis
		// (possibly shared) the Store decides for what other instances
		// recorded, and this log for what this instance did (its chain).
		IssuedComplete: !rt.cfg.Store.Shared(),
		Chain:          rt.sink.ChainID(),
		Interval:       interval, Grace: grace, Logger: rt.log,
	})
	if err != nil {
		return err
	}
	if err := registerReconcileMetrics(rt.reg, rec); err != nil {
		return err
	}
	rt.goAfterStart(rec.Run)
	return nil
}

// orphanReasons are the reasons the reconciliation revokes for, each a
// keytrail_reconcile_revoked_total series from the start.
var orphanReasons = []string{broker.OrphanNoRecord, broker.OrphanNotAudited, broker.OrphanRevoked, broker.OrphanAccessorChanged}

// registerReconcileMetrics exposes the reconciliation's totals
// (broker.ReconcileStats) as the keytrail_reconcile_* metrics.
func registerReconcileMetrics(reg prometheus.Registerer, rec *broker.Reconciler) error {
	stat := func(f func(broker.ReconcileStats) float64) func() float64 {
		return func() float64 { return f(rec.Stats()) }
	}
	cs := []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keytrail_reconcile_runs_total", Help: "Vault token reconciliation runs by outcome (ok, error: stopped by a store, audit index or Vault listing failure, revoking nothing after it).",
			ConstLabels: prometheus.Labels{"outcome": "ok"}}, stat(func(s broker.ReconcileStats) float64 { return float64(s.Runs) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keytrail_reconcile_runs_total", Help: "Vault token reconciliation runs by outcome (ok, error: stopped by a store, audit index or Vault listing failure, revoking nothing after it).",
			ConstLabels: prometheus.Labels{"outcome": "error"}}, stat(func(s broker.ReconcileStats) float64 { return float64(s.FailedRuns) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keytrail_reconcile_tokens_total", Help: "Keytrail Vault tokens the reconciliation runs looked at (listed, explained by the store or looked up)."},
			stat(func(s broker.ReconcileStats) float64 { return float64(s.Listed) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keytrail_reconcile_gone_total", Help: "Orphan Vault tokens already gone (expired) when the reconciliation revoked them; nothing recorded."},
			stat(func(s broker.ReconcileStats) float64 { return float64(s.Gone) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keytrail_reconcile_failures_total", Help: "Orphan Vault tokens whose revocation or orphan_revoked event failed (retried next run)."},
			stat(func(s broker.ReconcileStats) float64 { return float64(s.Failures) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keytrail_reconcile_last_success_timestamp_seconds", Help: "When the last completed reconciliation run ended (Unix seconds; 0: none yet)."},
			stat(func(s broker.ReconcileStats) float64 {
				if s.LastSuccess.IsZero() {
					return 0
				}
				return float64(s.LastSuccess.UnixNano()) / 1e9
			})),
	}
	for _, reason := range orphanReasons {
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keytrail_reconcile_revoked_total", Help: "Orphan Vault tokens the reconciliation revoked (each with an orphan_revoked event), by reason.",
			ConstLabels: prometheus.Labels{"reason": reason}}, stat(func(s broker.ReconcileStats) float64 { return float64(s.Revoked[reason]) })))
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// auditIssueIndex is the set of issuance ids with an `issue` event and no
// later `orphan_revoked` event in the local audit log (the live file and its rotated siblings), read
// incrementally: each Snapshot reads only the complete lines appended since
// the last one (of a live file rotated since, what follows where it stopped,
// under its rotated name). Ids of credentials expired for more than an hour are
// dropped. Its Since is the time of the oldest event it has read: the first
// line of the oldest file present when it first looked.
//
// It holds an hour and more of issuances (hundreds of thousands at high
// rates), so keytrail's own ids ("iss_" and a ULID) are kept as the ULID's
// 16 bytes with the expiry in Unix seconds: a map without pointers, which
// the garbage collector does not scan, at ~40 bytes an entry instead of
// ~100. Other ids (none are written today) are kept whole.
type auditIssueIndex struct {
	path string
	// listed, when set, is called after each listing of the directory
	// (tests: a rotation between the listing and the reads).
	listed func()
	// wrapRead, when set (tests), wraps each file readFrom reads.
	wrapRead func(*os.File) audit.File

	mu sync.Mutex
	// offsets is how far each file present was read, by the name it was
	// read under. A file renamed away from it (the live file rotated) is
	// found again by its identity under its new name (claim), and read on
	// from there; the offsets of files no longer there are dropped at the
	// end of each Snapshot.
	offsets map[string]fileOffset
	// moved are offsets whose name no longer held their file when read
	// (the live file rotated: a new file under its name, or none yet), to
	// be claimed by the file's new name in the same Snapshot.
	moved  []fileOffset
	issued map[ulid.ULID]int64 // expiry, Unix seconds (0: none)
	other  map[string]int64
	since  time.Time // of the oldest event read (zero: none yet)

	// withdrawn are the issuances of the orphan_revoked events read since
	// the last Snapshot that read every file: an issue event read after
	// one (the rest of the live file, rotated, is read after the new live
	// file, whose name sorts first) must not put its issuance back.
	withdrawn map[string]bool
}

func newAuditIssueIndex(path string) *auditIssueIndex {
	return &auditIssueIndex{path: path, offsets: map[string]fileOffset{}, issued: map[ulid.ULID]int64{}, other: map[string]int64{}}
}

// issuedKey is id's key in the ULID map: false when id is not "iss_"
// followed by a ULID in its canonical (upper-case) form.
func issuedKey(id string) (ulid.ULID, bool) {
	rest, ok := strings.CutPrefix(id, broker.PrefixIssuance)
	if !ok || len(rest) != ulid.EncodedSize {
		return ulid.ULID{}, false
	}
	u, err := ulid.ParseStrict(rest)
	if err != nil || u.String() != rest {
		return ulid.ULID{}, false
	}
	return u, true
}

// fileOffset is how far one file has been read; fi tells a new file under
// the same name (after a rotation) from the one read so far, and tail, the
// hash of the last line read (tailLen bytes with its newline, ending at
// off), a file the running broker cut back below off since (see readFrom).
// recent, of the live file only, is a copy of the last lines read (whole
// lines, ending at off, about indexRecentBytes): after a cut, reading
// goes on from the last of them the file still holds (see rewind).
type fileOffset struct {
	fi      os.FileInfo
	off     int64
	tail    string
	tailLen int
	recent  []byte
}

// indexRecentBytes is about how much of the last lines read the audit
// index keeps of the live file (fileOffset.recent): the sink cuts back at
// most the batch that failed.
const indexRecentBytes = 64 << 10

// rewind returns where to read o's file f (size bytes) again from after
// it was cut back below o.off: just after the last of the lines in
// o.recent that f still holds where they were read, or its start when it
// holds none of them.
func rewind(f io.ReaderAt, o fileOffset, size int64) fileOffset {
	start := o.off - int64(len(o.recent))
	if len(o.recent) == 0 || start >= size {
		return fileOffset{}
	}
	now := make([]byte, min(int64(len(o.recent)), size-start))
	n, _ := f.ReadAt(now, start)
	same := 0
	for same < n && now[same] == o.recent[same] {
		same++
	}
	end := bytes.LastIndexByte(o.recent[:same], '\n') + 1 // the end of the last line still held
	if end == 0 {
		return fileOffset{}
	}
	last := bytes.LastIndexByte(o.recent[:end-1], '\n') + 1
	return fileOffset{off: start + int64(end), tail: audit.HashLine(o.recent[last:end]), tailLen: end - last, recent: o.recent[:end]}
}

// Snapshot implements broker.IssuedIndex.
func (x *auditIssueIndex) Snapshot(ctx context.Context) (broker.IssuedSnapshot, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	dir, base := filepath.Split(x.path)
	if dir == "" {
		dir = "."
	}
	// The directory is listed again after the reads, and any file not
	// read in this Snapshot is read too, until a listing brings nothing
	// new: a rotation after a listing renames the live file, with what was
	// appended to it since the last Snapshot, to a name that listing did
	// not have. Missing those events would make their issuances look
	// unaudited, and the reconciliation revoke their credentials.
	read := map[string]bool{}
	for pass := 0; ; pass++ {
		names, err := auditFileNames(dir, base)
		if err != nil {
			return broker.IssuedSnapshot{}, err
		}
		if x.listed != nil {
			x.listed()
		}
		names = slices.DeleteFunc(names, func(n string) bool { return read[n] })
		if len(names) == 0 {
			break
		}
		if pass == maxIndexPasses {
			return broker.IssuedSnapshot{}, fmt.Errorf("audit index: %s: files still appearing after %d listings", x.path, pass)
		}
		for _, n := range names {
			if err := ctx.Err(); err != nil {
				return broker.IssuedSnapshot{}, err
			}
			if err := x.readFrom(filepath.Join(dir, n)); err != nil {
				return broker.IssuedSnapshot{}, err
			}
			read[n] = true
		}
	}
	// Every file there was read: the offsets of the others are of files
	// deleted since (rotated files removed by retention), and offsets moved
	// and not claimed, of files gone too.
	for p := range x.offsets {
		if !read[filepath.Base(p)] {
			delete(x.offsets, p)
		}
	}
	x.moved, x.withdrawn = nil, nil
	cut := time.Now().Add(-time.Hour).Unix()
	for id, exp := range x.issued {
		if exp != 0 && exp < cut {
			delete(x.issued, id)
		}
	}
	for id, exp := range x.other {
		if exp != 0 && exp < cut {
			delete(x.other, id)
		}
	}
	// The index itself answers (no copy: with an hour of issuances it is
	// the largest thing the broker holds); reads after this Snapshot may
	// see later events too, which the contract allows.
	return broker.IssuedSnapshot{Since: x.since, Issued: func(id string) bool {
		x.mu.Lock()
		defer x.mu.Unlock()
		var ok bool
		if u, isULID := issuedKey(id); isULID {
			_, ok = x.issued[u]
		} else {
			_, ok = x.other[id]
		}
		return ok
	}}, nil
}

// maxIndexPasses bounds the listings of one Snapshot: each one after the
// first follows a rotation during the previous reads.
const maxIndexPasses = 8

// auditFileNames lists the audit file base and its rotated siblings in
// dir (base.<time>, trace.IsRotated: the names the sink gives them, which
// trace and audit verify read too), sorted; regular files only. Other
// files named base.* (a compressed copy, base.<time>.gz, a backup) hold no
// audit lines to read.
func auditFileNames(dir, base string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("audit index: %w", err)
	}
	var names []string
	for _, e := range ents {
		if n := e.Name(); e.Type().IsRegular() && (n == base || rotatedOf(n, base)) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names, nil
}

// rotatedOf reports whether name is a rotated file of the audit file base.
func rotatedOf(name, base string) bool {
	b, ok := trace.IsRotated(name)
	return ok && b == base
}

// indexReadBuffer is the read buffer of the audit index: the log is
// streamed through it line by line (a line longer than it is gathered
// whole), so a run's memory does not grow with what was appended since the
// last one (a soak found whole-section reads of ~300 MB every 5 minutes).
const indexReadBuffer = 256 << 10

// readFrom reads the complete lines appended to path since the last run
// (path may be the live file read so far under its rotated name: claim).
// The broker's sink cuts its live file back to its last durable line when
// a write fails, and writes on from there: lines read past that point are
// then gone, and the file may have grown back past where the last run
// stopped, so that reading on from there would start in the middle of a
// line and leave out the lines before it (issuances that would look
// unaudited). So the last line read is checked first (its hash), and when
// the file no longer holds it, it is read again from just after the last
// line of the live file's recent ones (fileOffset.recent) it still holds
// (rewind; from its start when none: a whole file of several GB for one
// failed batch otherwise); and the lines are read through an
// audit.LineReader, which never joins part of a line (a torn write) to
// what the sink writes at its offset after such a cut, and fails with
// audit.ErrCutBelowRead when lines already read are cut meanwhile, after
// which the file is read again the same way, once. Lines read again have
// their issuances indexed again (the same entries); those of lines cut are
// kept until they expire.
func (x *auditIssueIndex) readFrom(path string) error {
	f, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) {
			// Renamed since the listing (the live file rotated): its
			// new name claims its offset.
			if prev, ok := x.offsets[path]; ok {
				delete(x.offsets, path)
				x.moved = append(x.moved, prev)
			}
			return nil
		}
		return fmt.Errorf("audit index: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("audit index: %w", err)
	}
	prev, ok := x.offsets[path]
	if !ok || (prev.fi != nil && !os.SameFile(prev.fi, fi)) {
		if ok {
			// Another file under this name (the live file rotated):
			// the one read so far is under its rotated name now.
			x.moved = append(x.moved, prev)
		}
		prev = x.claim(path, fi)
	}
	if fi.Size() < prev.off || !holdsTail(f, prev) { // cut back
		prev = rewind(f, prev, fi.Size())
	}
	keep := filepath.Base(path) == filepath.Base(x.path) // the live file: only it is cut back
	if !keep {
		prev.recent = nil // of the live file, rotated: no longer written
	}
	if fi.Size() == prev.off {
		prev.fi = fi
		x.offsets[path] = prev
		return nil
	}
	var src audit.File = f
	if x.wrapRead != nil {
		src = x.wrapRead(f)
	}
	for again := true; ; again = false {
		cur, err := x.readLines(src, prev, keep)
		cur.fi = fi
		switch {
		case errors.Is(err, audit.ErrCutBelowRead) && again:
			prev = rewind(src, cur, math.MaxInt64)
			continue
		case err != nil:
			x.offsets[path] = fileOffset{}
			return fmt.Errorf("audit index: %s: %w", path, err)
		}
		if cur.off == prev.off {
			cur = prev
			cur.fi = fi
		}
		x.offsets[path] = cur
		return nil
	}
}

// claim returns the offset of fi, a file not read under the name path yet:
// read so far under the live file's name when it is the live file rotated
// away (the sink renames only the live file, to a new rotated name), taken
// from there; else none (a new file, read from its start). The file's
// identity (os.SameFile) tells it, and the checks of readFrom that the
// file still holds the last line read apply as under the old name.
func (x *auditIssueIndex) claim(path string, fi os.FileInfo) fileOffset {
	for i, o := range x.moved {
		if o.fi != nil && os.SameFile(o.fi, fi) {
			x.moved = slices.Delete(x.moved, i, i+1)
			return o
		}
	}
	live := filepath.Join(filepath.Dir(path), filepath.Base(x.path))
	if o, ok := x.offsets[live]; ok && live != path && o.fi != nil && os.SameFile(o.fi, fi) {
		delete(x.offsets, live)
		return o
	}
	return fileOffset{}
}

// holdsTail reports whether f still holds, just before o.off, the last
// line read there (always when nothing was read).
func holdsTail(f io.ReaderAt, o fileOffset) bool {
	if o.off == 0 || o.tailLen == 0 {
		return true
	}
	b := make([]byte, o.tailLen)
	if _, err := f.ReadAt(b, o.off-int64(o.tailLen)); err != nil {
		return false
	}
	return audit.HashLine(b) == o.tail
}

// readLines indexes the complete lines of f from prev.off and returns how
// far it read, with the last line's hash, and with keep the last lines
// read (recent).
func (x *auditIssueIndex) readLines(f audit.File, prev fileOffset, keep bool) (fileOffset, error) {
	off := prev.off
	first := off == 0
	r := bufio.NewReaderSize(audit.NewLineReader(f, off), indexReadBuffer)
	var long, last []byte // last: the last line read, unless it was long (hashed then)
	out := fileOffset{off: off, tail: prev.tail, tailLen: prev.tailLen}
	var recent []byte // the last lines read, whole, with keep (nil after a long line)
	if keep {
		recent = prev.recent
	}
	done := func() fileOffset {
		if len(last) > 0 {
			out.tail, out.tailLen = audit.HashLine(last), len(last)
		}
		out.recent = recent
		return out
	}
	for {
		line, err := r.ReadSlice('\n')
		isLong := errors.Is(err, bufio.ErrBufferFull)
		if isLong {
			long = append(long[:0], line...)
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = r.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if errors.Is(err, io.EOF) {
			return done(), nil // nothing more, or a last line still being written: read it next time
		}
		if err != nil {
			return done(), err
		}
		out.off += int64(len(line))
		if !isLong {
			last = append(last[:0], line...) // hashed once, at the end
			if keep {
				recent = keepRecent(recent, line)
			}
		} else {
			// A long line (read into long): hashed now rather than
			// copied once more.
			last = last[:0]
			out.tail, out.tailLen = audit.HashLine(line), len(line)
			recent = nil // from the start, if cut
		}
		if first {
			x.noteFirst(line)
			first = false
		}
		x.indexLine(line[:len(line)-1])
	}
}

// keepRecent appends line to recent and drops whole lines from its start
// beyond indexRecentBytes (the last line is always kept).
func keepRecent(recent, line []byte) []byte {
	recent = append(recent, line...)
	if len(recent) <= 2*indexRecentBytes {
		return recent
	}
	from := len(recent) - indexRecentBytes
	if i := bytes.IndexByte(recent[from-1:], '\n'); i >= 0 && from+i < len(recent) {
		from += i // the first line that starts past from
	} else {
		from = len(recent) - len(line)
	}
	return recent[:copy(recent, recent[from:])]
}

// noteFirst lowers Since to the time of a file's first line. A line
// without a readable time leaves it: the index then vouches for less.
func (x *auditIssueIndex) noteFirst(line []byte) {
	var ev struct {
		Time time.Time `json:"time"`
	}
	if json.Unmarshal(line, &ev) != nil || ev.Time.IsZero() {
		return
	}
	if x.since.IsZero() || ev.Time.Before(x.since) {
		x.since = ev.Time
	}
}

// indexLine records the issuance of an `issue` event line, and forgets it
// again at its `orphan_revoked` event: the credential was withdrawn (an
// exchange whose store write failed after the issue event, or an earlier
// run), so the issue event no longer explains it. Without that, a
// store_failed credential whose revocation failed too (never handed out)
// was kept by every run for its whole TTL, the log's issue event standing
// in for the record the store never got.
func (x *auditIssueIndex) indexLine(line []byte) {
	if !bytes.Contains(line, []byte(`"type":"issue"`)) && !bytes.Contains(line, []byte(`"type":"orphan_revoked"`)) {
		return
	}
	var ev struct {
		Type       string            `json:"type"`
		IssuanceID string            `json:"issuance_id"`
		Credential *audit.Credential `json:"credential"`
	}
	if json.Unmarshal(line, &ev) != nil || ev.IssuanceID == "" {
		return
	}
	if ev.Type == audit.TypeOrphanRevoked {
		if x.withdrawn == nil {
			x.withdrawn = map[string]bool{}
		}
		x.withdrawn[ev.IssuanceID] = true
		if u, ok := issuedKey(ev.IssuanceID); ok {
			delete(x.issued, u)
		} else {
			delete(x.other, ev.IssuanceID)
		}
		return
	}
	if ev.Type != audit.TypeIssue || x.withdrawn[ev.IssuanceID] {
		return
	}
	var exp int64
	if ev.Credential != nil {
		if t, err := time.Parse(time.RFC3339, ev.Credential.ExpiresAt); err == nil {
			exp = t.Unix()
		}
	}
	if u, ok := issuedKey(ev.IssuanceID); ok {
		x.issued[u] = exp
	} else {
		x.other[ev.IssuanceID] = exp
	}
}
