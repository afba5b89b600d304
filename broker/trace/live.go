package trace

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/policies"
)

// LiveOptions configure a Live source.
type LiveOptions struct {
	// Path is this instance's audit file (config audit.file). Its rotated
	// siblings are read too. Required.
	Path string
	// Store is the shared store, for issuances this instance's log does not
	// hold (made by another instance, or dropped from the bounded index)
	// and for the active credentials of every instance. Optional.
	Store broker.Store
	// Policy returns the policy in force (for the report). Optional.
	Policy func() *policies.Policy
	// Now is the clock; default time.Now.
	Now func() time.Time
	// MaxEvents bounds the in-memory index (0: DefaultMaxEvents).
	MaxEvents int
	// StoreTimeout bounds one store call (default 2s).
	StoreTimeout time.Duration
	// RefreshWait bounds how long a trace or report waits for the
	// refresh of the audit files, another call's or the one it started
	// itself (a rebuild reads every file again: about 12 s at 200,000
	// events; so does the first load), before it answers unavailable
	// (503, with Retry-After) rather than holding the auditor's request
	// that long; a refresh it started goes on in the background
	// (default DefaultRefreshWait).
	RefreshWait time.Duration
	// Logger; default discards.
	Logger *slog.Logger
}

// Live is the broker's online trace and report source. Every call first
// reads what was appended to the audit file since the previous call
// (following rotations: the rest of a file that was rotated away is read
// from its new name), so answers are current without a goroutine tailing
// the file (a call's refresh runs in one of its own, so that a long one,
// the first load or a rebuild, goes on after the call answered
// unavailable: see refreshWithin). When the file no longer holds the last line read (the sink
// rolled back a failed batch, even if it has written past that point since),
// the events of the lines that are gone are dropped from the index and the
// file is read on from the last line read that it still holds (of the last
// ~64 KiB read; when those start at the file's start and it holds none of
// them, as when the first batch after a rotation failed, all of that
// file's events are dropped and it is read again; below those, or when an
// event of the lines gone made the bounded index drop older ones, the
// index is rebuilt from the files, to the side: readers see the old index
// until the new one is complete). So is it when the live file was
// replaced under its name: the file tailed is gone, no rotated file
// appeared, and the new file does not continue the chain of the last line
// read (one that does is the next file of a rotation whose rotated file
// was deleted, read on); and when a rotated file not read before appears
// while the file tailed has not rotated, and does not continue that chain
// (the replacement rotated away, or a rotated file read before, moved out
// and back).
// Memory is bounded by MaxEvents (twice during a rebuild). Safe for
// concurrent use.
type Live struct {
	o LiveOptions
	// idx is the published index, the one readers use.
	idx atomic.Pointer[Index]

	// mu serialises refreshes: a refresh holds its one slot. A channel,
	// not a sync.Mutex, so that a trace or report waits for it at most
	// RefreshWait (lockWithin).
	mu chan struct{}
	// readState describes w, the index refreshes read into: idx, except
	// while a rebuild builds its new index to the side.
	readState

	// afterList, when set (tests only), is called by each refresh after it
	// listed the rotated files and before it opens the audit file.
	afterList func()
	// afterListRotated, when set (tests only), is called by readRotated
	// with the rotated files it listed, before it opens any, and returns
	// the listing readRotated goes on with: a file removed by it is one
	// retention deleted after the listing; a name it leaves out is one a
	// listing missed.
	afterListRotated func([]string) []string
	// wrapRead, when set (tests only), wraps each audit file readFrom
	// reads.
	wrapRead func(*os.File) audit.File
	// wrapResume, when set (tests only), wraps the file resume reads back
	// to find the last recent line it still holds (readFrom's reads go
	// through wrapRead).
	wrapResume func(io.ReaderAt) io.ReaderAt
	// afterRead, when set (tests only), is called by readFrom once it has
	// indexed the lines it read, before it returns: a sink that cuts the
	// file back and grows it again there does so after the read.
	afterRead func()
}

// NewLive validates o and returns a Live source. It reads nothing until
// the first call.
func NewLive(o LiveOptions) (*Live, error) {
	if o.Path == "" {
		return nil, errors.New("trace: LiveOptions.Path is required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.StoreTimeout <= 0 {
		o.StoreTimeout = 2 * time.Second
	}
	if o.RefreshWait <= 0 {
		o.RefreshWait = DefaultRefreshWait
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	idx, err := NewIndex(Options{MaxEvents: o.MaxEvents})
	if err != nil {
		return nil, err
	}
	l := &Live{o: o, mu: make(chan struct{}, 1), readState: readState{w: idx, done: map[string]bool{}}}
	l.idx.Store(idx)
	return l, nil
}

// Index returns the live index (refreshed by each call).
func (l *Live) Index() *Index { return l.idx.Load() }

// DefaultRefreshWait is LiveOptions.RefreshWait's default.
const DefaultRefreshWait = 2 * time.Second

// busyRetryAfter is the Retry-After of a trace or report that found another
// call's refresh still running after RefreshWait: most likely a rebuild,
// which takes seconds.
const busyRetryAfter = 5 * time.Second

var errBusy = errors.New("trace: another call is reading the audit files (a rebuild of the index, or its first load)")

func (l *Live) lock() { l.mu <- struct{}{} }

func (l *Live) unlock() { <-l.mu }

// lockWithin takes the refresh lock, waiting until timeout fires or ctx
// ends at most; an unavailable error (reason audit_index_busy) when it
// could not.
func (l *Live) lockWithin(ctx context.Context, timeout <-chan time.Time) error {
	select {
	case l.mu <- struct{}{}:
		return nil
	default:
	}
	cause := errBusy
	select {
	case l.mu <- struct{}{}:
		return nil
	case <-timeout:
	case <-ctx.Done():
		cause = fmt.Errorf("%w: %w", errBusy, ctx.Err())
	}
	return busyError(cause)
}

// busyError is the unavailable error (503, reason audit_index_busy) of a
// trace or report that found the audit files still being read after
// RefreshWait.
func busyError(cause error) error {
	e := broker.Unavailable("audit_index_busy", busyRetryAfter, cause)
	e.Safe = "the audit log is being read (the trace index is rebuilt or loaded); retry later"
	return e
}

// Refresh reads what was appended to the audit files since the last call.
func (l *Live) Refresh() error {
	l.lock()
	defer l.unlock()
	return l.refreshLocked()
}

// refreshWithin is Refresh for a trace or report, bounded: it waits for
// another call's refresh and for its own at most RefreshWait in all, or
// until ctx ends, and answers unavailable (audit_index_busy) then. Its own
// refresh runs in a goroutine that holds the lock until it is done: a long
// one (the first load after start, a rebuild) goes on after this call
// answered, and the calls after it wait for it, each at most RefreshWait,
// as for any other call's. The error of a refresh no call waited for is
// dropped: it changed nothing (see rebuild), and the next call's refresh
// reads the same files again and answers with it. Other errors are what
// the caller answers.
func (l *Live) refreshWithin(ctx context.Context) error {
	t := time.NewTimer(l.o.RefreshWait)
	defer t.Stop()
	if err := l.lockWithin(ctx, t.C); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		var err error
		defer func() {
			// Out of the HTTP handler, whose recovery a panic no
			// longer reaches: the process goes on, the call answers
			// an error.
			if p := recover(); p != nil {
				l.o.Logger.LogAttrs(context.Background(), slog.LevelError, "trace: panic reading the audit files", slog.Any("panic", p))
				err = errors.New("trace: internal error reading the audit files")
			}
			l.unlock()
			done <- err
		}()
		err = l.refreshLocked()
	}()
	cause := errBusy
	select {
	case err := <-done:
		if err != nil {
			return broker.Unavailable("audit_unreadable", time.Second, err)
		}
		return nil
	case <-t.C:
	case <-ctx.Done():
		cause = fmt.Errorf("%w: %w", errBusy, ctx.Err())
	}
	return busyError(cause)
}

// refreshLocked is Refresh; the caller holds the lock.
func (l *Live) refreshLocked() error {
	err := l.refresh()
	if errors.Is(err, errRolledBack) {
		// The sink truncated lines that never became durable (a failed
		// write or fsync), below the recent lines readCur could resume
		// from: start over so the index holds only what the files hold.
		return l.rebuild()
	}
	return err
}

// readState is what a refresh reads on from: the index it reads into and
// where it stopped in the files.
type readState struct {
	w      *Index
	cur    os.FileInfo
	curOff int64
	// curTail is the last line read of cur, the bytes just before curOff
	// (its hash and length, as read): a rollback the file grew back over
	// since shows there.
	curTail tailSum
	// recent are the last lines read of cur, ending at curOff, with the
	// index's counters after each (see resume).
	recent recentLines
	// curStart is the index's counters before the first line of cur, when
	// every event the index got since is of cur (curStartOK): a cut of
	// every line of cur drops those and reads cur again, not every file.
	curStart   lineMark
	curStartOK bool
	done       map[string]bool // rotated files fully read (and still listed)
}

// rebuild reads the files again from their start into a new index, built
// to the side: readers go on with the published index (which nothing
// changes meanwhile) until the new one has read every file to its end
// (all that the old one had read, as the files hold it now), then see the
// new one, whole; never a partial one (an issuance made long ago "not
// found"). When the rebuild fails, the new index is dropped and Live reads
// on from the published one's state (the next call rebuilds again), and
// the error is returned.
//
// Memory: both indexes are held while the new one is read, twice the
// index's memory at the peak (measured: 200,000 issue and use events, a
// 113 MB log, are 268 MB of heap in one index, 536 MB at the end of their
// rebuild).
func (l *Live) rebuild() error {
	idx, err := NewIndex(Options{MaxEvents: l.o.MaxEvents})
	if err != nil {
		return err
	}
	old := l.readState
	// A new recentLines: the old one's buffers are the published state's.
	l.readState = readState{w: idx, done: map[string]bool{}}
	if err := l.refresh(); err != nil {
		l.readState = old
		return err
	}
	l.idx.Store(idx)
	return nil
}

var errRolledBack = errors.New("trace: the audit file no longer holds what was read")

func (l *Live) refresh() error {
	appeared, err := l.readRotated(nil)
	if err != nil {
		return err
	}
	if l.afterList != nil {
		l.afterList()
	}
	// The file is read through the descriptor its identity comes from: a
	// rotation after the open does not matter (what follows is read under
	// the rotated name, from where this read stops).
	f, err := os.Open(l.o.Path)
	if errors.Is(err, os.ErrNotExist) {
		// Rotated since the listing, perhaps, and not created again yet:
		// list again, so the old file's lines are read now (the rest of
		// cur; all of it when no file is tailed, as in a rebuild).
		_, err := l.readRotated(nil)
		return err
	}
	if err != nil {
		return fmt.Errorf("trace: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("trace: %w", err)
	}
	if l.cur == nil || !os.SameFile(fi, l.cur) {
		// The file being tailed, or when none is (the first call, a
		// rebuild) the one that was, may have been rotated after the
		// listing above (a rotation renames it before it creates the new
		// file, so its new name is listed now): read its rest from where
		// the tail stopped, or all of it, before the new file, rather than
		// at the next call (after the new file's lines; a rebuild would
		// publish an index without them).
		n, err := l.readRotated(fi)
		if err != nil {
			return err
		}
		if l.cur != nil && l.curOff > 0 && appeared+n == 0 {
			// The file tailed, of which the index holds lines, is
			// neither the live file nor a rotated one, and no rotated
			// file appeared: rotated, and its rotated file deleted
			// since (retention keeping none, a shipper moving each
			// away), or replaced under its name without a rotation
			// (restored from a backup, replaced by hand). The new
			// file of a rotation continues the chain of the last line
			// read; read on then, keeping the events read of the file
			// gone, as for any rotated file deleted after it was read
			// (a rebuild would drop them, and every earlier file's
			// too, or not, as the deletion came before this call or
			// after). Another file, read as the next one, would put
			// its lines after the old one's (a backup's twice) in an
			// index that holds a file no longer there: rebuild it from
			// the files. A new file without a whole line yet is looked
			// at again by the next call.
			next, known, err := l.continuesCur(f, fi.Size())
			switch {
			case err != nil:
				return err
			case !known:
				return nil
			case !next:
				return errRolledBack
			}
		}
		l.cur, l.curOff, l.curTail = fi, 0, tailSum{}
		l.recent.reset()
		l.curStart, l.curStartOK = l.w.counters(), true
	}
	return l.readCur(f, fi.Size())
}

// continuesCur reports whether f, a file found where cur was looked for
// (under the audit file's name on another inode, or on cur's inode no
// longer holding the last line read), size bytes long, is the next file of
// a rotation of cur: its first line is of the chain of the last line read
// of cur, with a later seq (a restored backup of cur, or cur cut back by
// the sink, starts at or before that line; another log is another chain).
// Known is false while f holds no whole line (a rotation's new file before
// its first batch). The last
// line read is the last of the recent lines; when they do not hold it
// (it was longer than audit.MaxLineBytes) or it is not an event, f is
// not taken for the next file.
func (l *Live) continuesCur(f io.ReaderAt, size int64) (next, known bool, err error) {
	line, err := bufio.NewReader(io.NewSectionReader(f, 0, min(size, audit.MaxLineBytes+1))).ReadBytes('\n')
	switch {
	case errors.Is(err, io.EOF) && size <= audit.MaxLineBytes:
		return false, false, nil // no whole line yet
	case errors.Is(err, io.EOF):
		return false, true, nil // longer than an audit line
	case err != nil:
		return false, false, fmt.Errorf("trace: %w", err)
	}
	first, err := audit.ParseLine(line[:len(line)-1])
	if err != nil {
		return false, true, nil
	}
	r := &l.recent
	if len(r.marks) == 0 {
		return false, true, nil
	}
	from := 0
	if len(r.marks) > 1 {
		from = r.marks[len(r.marks)-2].end
	}
	last, err := audit.ParseLine(r.buf[from : r.marks[len(r.marks)-1].end-1])
	if err != nil {
		return false, true, nil
	}
	return first.Chain == last.Chain && first.Seq > last.Seq, true, nil
}

// readCur reads on f, the file being tailed (cur, under its name or its
// rotated one), size bytes long when looked at, from curOff. When f no
// longer holds the last line read there, or is cut below the lines read
// while they are read, the events of the lines gone are dropped and it is
// read on from the last line it still holds (resume); errRolledBack when
// it holds none of the recent lines (the index is then rebuilt). An f
// that no longer holds the last line read and whose first line continues
// the chain of that line (continuesCur) is another file on cur's inode,
// reused: it is read from its start, as the next file.
func (l *Live) readCur(f *os.File, size int64) error {
	if err := l.checkTail(f, size); err != nil {
		if !errors.Is(err, errRolledBack) {
			return err
		}
		next, known, cerr := l.continuesCur(f, size)
		if cerr != nil {
			return cerr
		}
		if known && next {
			// Not cur cut back (a cut keeps its first line, or
			// writes it again with the same seq) but the next file
			// of a rotation, on the inode cur had: its rotated file
			// was deleted before the new file was created, and the
			// file system gave the new one the inode (ext4 does at
			// once). Read it as the next file, as refresh does one
			// on another inode.
			l.curOff, l.curTail = 0, tailSum{}
			l.recent.reset()
			l.curStart, l.curStartOK = l.w.counters(), true
		} else {
			ok, rerr := l.resume(f, size)
			if rerr != nil {
				return rerr
			}
			if !ok {
				return err
			}
		}
	}
	for again := true; ; again = false {
		n, tail, err := l.readFrom(f, l.curOff, &l.recent)
		if n > 0 {
			l.curOff += n
			l.curTail = tail
		}
		if errors.Is(err, errRolledBack) && again {
			ok, rerr := l.resume(f, math.MaxInt64)
			if rerr != nil {
				return rerr
			}
			if ok {
				continue // once: a sink that keeps cutting meanwhile gets a rebuild
			}
		}
		return err
	}
}

// resume drops from the index the events of the lines of cur after the
// last of its recent lines f (size bytes) still holds where they were
// read, and sets curOff after that line; when f holds none of them and
// they start at its start, every event of cur, and sets curOff to 0
// (resumeStart). False when f holds none of them and they start further
// on, or the index can no longer drop those events (see Index.dropAfter).
// An error reading f back drops nothing and is returned: that f holds
// none of the lines is not known then (falling back to resumeStart would
// drop from the published index events the file still holds, and a
// rebuild would read every file again for one failed read).
func (l *Live) resume(f io.ReaderAt, size int64) (bool, error) {
	if l.wrapResume != nil {
		f = l.wrapResume(f)
	}
	ok, err := l.resumeRecent(f, size)
	if err != nil || ok {
		return ok, err
	}
	return l.resumeStart(), nil
}

// resumeStart, when the recent lines are every line read of cur and f
// holds none of them (resumeRecent failed: the first batch written after a
// rotation failed, say), drops from the index every event of cur and sets
// curOff to 0: cur is read again from its start, and only cur (Live used
// to read every rotated file again). The index then holds what the files
// hold before the cut, as readers need (see rebuild); after a cut below
// the recent lines it would not until cur is read again, and the index is
// rebuilt instead. False also when the index got events of another file
// since cur's first line, or cannot drop those of cur (it compacted since:
// see Index.dropAfter).
func (l *Live) resumeStart() bool {
	if l.curOff != int64(len(l.recent.buf)) || !l.curStartOK ||
		!l.w.dropAfter(l.curStart.next, l.curStart.skipped, l.w.counters()) {
		return false
	}
	l.curOff, l.curTail = 0, tailSum{}
	l.recent.reset()
	return true
}

// resumeRecent is resume from the last of the recent lines f still holds;
// false when it holds none of them, an error (nothing dropped) when f
// could not be read.
func (l *Live) resumeRecent(f io.ReaderAt, size int64) (bool, error) {
	r := &l.recent
	start := l.curOff - int64(len(r.buf))
	if len(r.marks) == 0 || start < 0 || start >= size {
		return false, nil
	}
	now := make([]byte, min(int64(len(r.buf)), size-start))
	n, err := f.ReadAt(now, start)
	if err != nil && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("trace: read back after a cut: %w", err)
	}
	same := 0
	for same < n && now[same] == r.buf[same] {
		same++
	}
	i := len(r.marks) - 1
	for i >= 0 && r.marks[i].end > same {
		i--
	}
	if i < 0 || !l.w.dropAfter(r.marks[i].next, r.marks[i].skipped, r.marks[len(r.marks)-1]) {
		return false, nil
	}
	from := 0
	if i > 0 {
		from = r.marks[i-1].end
	}
	line := r.buf[from:r.marks[i].end]
	l.curOff = start + int64(r.marks[i].end)
	l.curTail = tailSum{sum: sha256.Sum256(line), n: int64(len(line))}
	r.buf, r.marks = r.buf[:r.marks[i].end], r.marks[:i+1]
	return true, nil
}

// liveRecentBytes is about how much of the last lines read of the file
// being tailed Live keeps (recentLines): a sink cuts back at most the
// batch that failed.
const liveRecentBytes = 64 << 10

// recentLines are the last lines read of a file, whole, up to where
// reading stopped (about liveRecentBytes, at least the last line; none
// after a line longer than audit.MaxLineBytes), each with the index's
// counters after it.
type recentLines struct {
	buf   []byte
	marks []lineMark
}

// lineMark is where a line of recentLines ends in buf, and the index's
// counters after it was indexed: the number of the next event it keeps,
// and how many lines it skipped.
type lineMark struct {
	end           int
	next, skipped int64
}

func (r *recentLines) reset() {
	r.buf, r.marks = r.buf[:0], r.marks[:0]
}

// add appends line (with its newline) and the counters after it, and
// drops whole lines from the start beyond liveRecentBytes once it holds
// twice that.
func (r *recentLines) add(line []byte, next, skipped int64) {
	r.buf = append(r.buf, line...)
	r.marks = append(r.marks, lineMark{end: len(r.buf), next: next, skipped: skipped})
	if len(r.buf) <= 2*liveRecentBytes || len(r.marks) < 2 {
		return
	}
	i := 0 // the lines up to marks[i] are dropped
	for i < len(r.marks)-2 && len(r.buf)-r.marks[i].end > liveRecentBytes {
		i++
	}
	cut := r.marks[i].end
	r.buf = r.buf[:copy(r.buf, r.buf[cut:])]
	r.marks = r.marks[:copy(r.marks, r.marks[i+1:])]
	for j := range r.marks {
		r.marks[j].end -= cut
	}
}

// readRotated reads the rotated siblings not read yet: the file being
// tailed (cur), found under its rotated name, from curOff; any other from
// its start. A sibling that is next (the file about to be tailed, rotated
// since it was opened) is left for a later call, which finds it as cur;
// one deleted since the listing (retention) is skipped. It returns how
// many rotated files it listed that were not read before (read now, left
// or skipped): a rotation since the last listing, when not 0.
func (l *Live) readRotated(next os.FileInfo) (int, error) {
	rotated, err := RotatedSiblings(l.o.Path)
	if err != nil {
		return 0, err
	}
	if l.afterListRotated != nil {
		rotated = l.afterListRotated(rotated)
	}
	l.forgetDeleted(rotated)
	n := 0
	for _, p := range rotated {
		if l.done[filepath.Base(p)] {
			continue
		}
		n++
		if err := l.readRotatedFile(p, next); err != nil {
			return n, err
		}
	}
	return n, nil
}

// forgetDeleted drops from done the rotated files rotated, a listing of
// them, no longer names: retention deleted them. done used to keep one
// name per rotation for the life of the process. A file still there is
// listed (a listing returns every entry not added or removed meanwhile,
// and a rotated file is not renamed again), so its name is kept and it is
// never read again; a name not listed is not listed later unless a new
// file takes it (rotated names grow with the chain), which is then read.
// Some file systems (NFS, some FUSE ones) can leave a present entry out of
// a listing, though: a name is dropped only once Lstat says it is gone, so
// a file missed by one listing is not read again when the next lists it.
// A file moved out and back under its name after its name was dropped is
// listed as a new one: readRotatedFile finds it does not continue the
// chain of the last line read, and the index is rebuilt.
// Any other Lstat error keeps the name (it is looked at again by each
// call that does not list it, and dropped once Lstat says it is gone):
// the file may still be there, and reading it again would duplicate its
// events.
// Only the names about to be dropped are looked at: none when every name
// is listed. The map is replaced, not deleted from: a Go map does not
// shrink.
func (l *Live) forgetDeleted(rotated []string) {
	listed := 0
	for _, p := range rotated {
		if l.done[filepath.Base(p)] {
			listed++
		}
	}
	if listed == len(l.done) {
		return
	}
	done := make(map[string]bool, listed)
	for _, p := range rotated {
		if b := filepath.Base(p); l.done[b] {
			done[b] = true
		}
	}
	dir := filepath.Dir(l.o.Path)
	for b := range l.done {
		if done[b] {
			continue
		}
		// Not listed. Kept unless it is gone: an error other than "does
		// not exist" cannot tell, and reading a file again would
		// duplicate its events.
		if _, err := os.Lstat(filepath.Join(dir, b)); !errors.Is(err, fs.ErrNotExist) {
			done[b] = true
		}
	}
	l.done = done
}

func (l *Live) readRotatedFile(p string, next os.FileInfo) error {
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		// Listed, and deleted since by retention (a rotated file is
		// not renamed again; the live file renamed by a rotation during
		// the refresh is found by refresh's second listing): its events
		// are gone from the log. Failing would fail this call, a
		// rebuild too, while the next one, listing again, succeeds.
		return nil
	}
	if err != nil {
		return fmt.Errorf("trace: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("trace: %w", err)
	}
	if next != nil && os.SameFile(fi, next) {
		return nil
	}
	if l.cur != nil && os.SameFile(fi, l.cur) {
		// The file we were tailing was rotated away: read its rest.
		if err := l.readCur(f, fi.Size()); err != nil {
			return err
		}
		l.cur, l.curOff, l.curTail = nil, 0, tailSum{}
		l.recent.reset()
		l.curStartOK = false
	} else {
		if l.cur != nil && l.curOff > 0 {
			// A rotated file not read before, while the file tailed,
			// of which the index holds lines, has not rotated: the next
			// file of a rotation whose rotated file (cur) was deleted
			// since, whose first line continues the chain of the last
			// line read (continuesCur). Any other (cur replaced under
			// its name and that rotated away; a rotated file read
			// before, moved out, forgotten by forgetDeleted and moved
			// back; one a listing missed) read now would put its lines
			// after the ones read since: rebuild the index from the
			// files instead.
			next, known, err := l.continuesCur(f, fi.Size())
			switch {
			case err != nil:
				return err
			case known && !next:
				return errRolledBack
			}
		}
		if l.cur != nil {
			l.curStartOK = false // not only cur's events since its start
		}
		if _, _, err := l.readFrom(f, 0, nil); err != nil {
			return err
		}
	}
	l.done[filepath.Base(p)] = true
	return nil
}

// tailSum is the SHA-256 and length of the last line a refresh read.
type tailSum struct {
	sum [sha256.Size]byte
	n   int64
}

// checkTail returns errRolledBack unless f (cur, or cur under its rotated
// name), size bytes long, still holds, just before curOff, the line read
// there. The sink truncates a batch that failed back to the last durable
// line; the file is shorter then, unless later batches have grown it past
// curOff again by the next call.
func (l *Live) checkTail(f io.ReaderAt, size int64) error {
	if size < l.curOff {
		return errRolledBack
	}
	if l.curOff == 0 {
		return nil
	}
	if l.curTail.n == 0 || l.curTail.n > l.curOff {
		return errRolledBack // not known: read it again
	}
	h := sha256.New()
	n, err := io.CopyBuffer(h, io.NewSectionReader(f, l.curOff-l.curTail.n, l.curTail.n), make([]byte, min(l.curTail.n, 32<<10)))
	if err != nil {
		return fmt.Errorf("trace: %w", err)
	}
	var sum [sha256.Size]byte
	if n < l.curTail.n || [sha256.Size]byte(h.Sum(sum[:0])) != l.curTail.sum {
		return errRolledBack // changed, or shrank since the Stat
	}
	return nil
}

// readFrom indexes the complete lines of f from off and returns the
// number of bytes read and the last line read, as read (not read back
// from the file afterwards: a cut and regrow since would be taken for
// it); with recent, it adds the lines read to it. It reads through an
// audit.LineReader: part of a line (a write in progress, or a torn one) is
// never joined to what the sink writes at its offset after cutting the
// file back, and a file cut back below lines already indexed meanwhile is
// errRolledBack.
func (l *Live) readFrom(f *os.File, off int64, recent *recentLines) (int64, tailSum, error) {
	var src audit.File = f
	if l.wrapRead != nil {
		src = l.wrapRead(f)
	}
	var last lastRead
	n, err := l.w.consume(audit.NewLineReader(src, off), &last, recent)
	if l.afterRead != nil {
		l.afterRead()
	}
	if errors.Is(err, audit.ErrCutBelowRead) {
		return n, tailSum{}, errRolledBack
	}
	var t tailSum
	t.sum, t.n = last.sum()
	return n, t, err
}

// Trace resolves q over this instance's audit log, then the store. Its
// not-found error says what was searched (notFoundHere).
func (l *Live) Trace(ctx context.Context, q string) (*Result, error) {
	if err := l.refreshWithin(ctx); err != nil {
		return nil, err
	}
	idx := l.idx.Load()
	res, err := idx.Lookup(q)
	if err == nil {
		l.mergeStore(ctx, idx, res)
		if res.Query.Kind == KindSerial {
			res = l.mergeStoreSerials(ctx, idx, q, res)
		}
		return res, nil
	}
	if !errors.Is(err, broker.ErrNotFound) {
		return nil, err
	}
	if l.o.Store == nil {
		return nil, l.notFoundHere(idx)
	}
	is, kind, shown, also, err := l.fromStore(ctx, q)
	if errors.Is(err, ErrNoMatch) {
		return nil, l.notFoundHere(idx)
	}
	if err != nil {
		return nil, err
	}
	res = idx.Issuance(is.ID)
	if res == nil {
		res = &Result{Uses: []*audit.Event{}, Revocations: []*audit.Event{}}
	}
	if ev := idx.issueEvent(is.ID); ev != nil {
		// The log has the issue event, yet not the value the store found
		// it by: the two disagree.
		res.addStoreConflict(ev, is, true)
	}
	res.Issuance, res.From = is, FromStore
	res.Query = Match{Kind: kind, Value: shown}
	res.AlsoMatched = also
	return res, nil
}

// notFoundHere is Trace's "no issuance matches" (reason no_match): it says
// what was searched, this instance's audit log (and the store's
// issuances and revocations), and that the ids of uses and requests made
// through another instance are only in that instance's log, where the
// offline trace over the collected logs finds them (the store holds
// issuances and revocations, not those ids). It never names the query.
// What callers are shown names the log as the broker's audit log, not by
// its path: an API caller is not shown the server's files (nor is one of
// Vault's API); the error's text, which the server logs, has the path.
func (l *Live) notFoundHere(idx *Index) error {
	var b strings.Builder
	b.WriteString("no issuance matches this value in the broker's audit log on the instance that answered (its audit.file and rotated files")
	if st := idx.Stats(); st.Dropped > 0 {
		fmt.Fprintf(&b, "; the in-memory index keeps its last %d events, %d older ones were not searched", st.Max, st.Dropped)
	}
	b.WriteString(")")
	if l.o.Store != nil {
		b.WriteString(" or the issuances and revocations of the shared store")
	}
	b.WriteString("; ids of uses and requests made through another instance (and of revocations the store does not hold) are only in that other instance's audit log:" +
		" trace the value offline over the audit logs collected from every instance (keytrail trace VALUE --audit-log FILE...)")
	return &broker.Error{Kind: broker.ErrNotFound, Reason: "no_match", Safe: b.String(),
		Err: fmt.Errorf("%w in %s and its rotated files", ErrNoMatch, l.o.Path)}
}

func nilSafe[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// mergeStore adds what only the store knows to an issuance rebuilt from
// the audit log: the identity claims used, and a revocation made by another
// instance (its revoke event is in that instance's log, the mark in the
// shared store).
func (l *Live) mergeStore(ctx context.Context, idx *Index, res *Result) {
	if l.o.Store == nil || res.Issuance == nil || res.Issuance.ID == "" {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, l.o.StoreTimeout)
	defer cancel()
	is, err := l.o.Store.GetIssuance(sctx, res.Issuance.ID)
	if err != nil {
		if !errors.Is(err, broker.ErrNotFound) {
			l.o.Logger.LogAttrs(ctx, slog.LevelWarn, "trace: store lookup failed", slog.String("issuance_id", res.Issuance.ID), slog.String("error", err.Error()))
		}
		return
	}
	if res.From == "" {
		res.Issuance, res.From = is, FromStore
		return
	}
	res.From = FromBoth
	if ev := idx.issueEvent(res.Issuance.ID); ev != nil {
		res.addStoreConflict(ev, is, false)
	}
	if res.Issuance.Claims == nil {
		res.Issuance.Claims = is.Claims
	}
	if res.Issuance.RevokedAt.IsZero() && !is.RevokedAt.IsZero() {
		res.Issuance.RevokedAt, res.Issuance.RevocationID = is.RevokedAt, is.RevocationID
	}
}

// addStoreConflict adds to r.Conflicts where stored, the store's record,
// disagrees with the issuance's issue event ev; storeShown says which of
// the two the result shows.
func (r *Result) addStoreConflict(ev *audit.Event, stored *broker.Issuance, storeShown bool) {
	logged := issuanceOf(ev)
	shown, other := logged, stored
	if storeShown {
		shown, other = stored, logged
	}
	ds := issuanceDiffs(shown, other)
	if len(ds) == 0 {
		return
	}
	parts := make([]string, len(ds))
	for i, d := range ds {
		st, lg := d.other, d.shown
		where := "%s %q in the store, %q in the log (shown)"
		if storeShown {
			st, lg = d.shown, d.other
			where = "%s %q in the store (shown), %q in the log"
		}
		parts[i] = fmt.Sprintf(where, d.field, st, lg)
	}
	r.Conflicts = append(r.Conflicts, fmt.Sprintf("the store's record of %s disagrees with its issue event in the audit log (chain %s, seq %d): %s",
		logged.ID, ev.Chain, ev.Seq, strings.Join(parts, ", ")))
}

// mergeStoreSerials adds to res, an answer of the index for a serial, the
// issuances only the store has under q's serial readings (an all-digit
// value reads as hex and as decimal; the index may hold the issuance of one
// reading, another instance the other's): every issuance found is an
// answer, oldest first, as Index.Lookup orders them. A store failure is
// logged and leaves res as it is.
func (l *Live) mergeStoreSerials(ctx context.Context, idx *Index, q string, res *Result) *Result {
	if l.o.Store == nil || res.Issuance == nil {
		return res
	}
	cands, err := candidates(q)
	if err != nil {
		return res
	}
	var serials []string
	for _, c := range cands {
		if c.kind == KindSerial {
			serials = c.serials
		}
	}
	if len(serials) < 2 {
		return res // one reading: the index found its issuance
	}
	known := map[string]bool{res.Issuance.ID: true}
	for _, id := range res.AlsoMatched {
		known[id] = true
	}
	stored := map[string]*broker.Issuance{}
	ids := append([]string{res.Issuance.ID}, res.AlsoMatched...)
	for _, s := range serials {
		sctx, cancel := context.WithTimeout(ctx, l.o.StoreTimeout)
		is, err := l.o.Store.FindIssuance(sctx, broker.RefSerial, vaultSerial(s))
		cancel()
		switch {
		case errors.Is(err, broker.ErrNotFound):
			continue
		case err != nil:
			l.o.Logger.LogAttrs(ctx, slog.LevelWarn, "trace: store lookup failed", slog.String("kind", KindSerial), slog.String("error", err.Error()))
			return res
		case is == nil || known[is.ID]:
			continue
		}
		known[is.ID], stored[is.ID] = true, is
		ids = append(ids, is.ID)
	}
	if len(stored) == 0 {
		return res
	}
	at := map[string]time.Time{res.Issuance.ID: res.Issuance.IssuedAt}
	for _, id := range ids[1:] {
		if is := stored[id]; is != nil {
			at[id] = is.IssuedAt
		} else {
			at[id] = idx.issueTime(id)
		}
	}
	sort.SliceStable(ids, func(i, j int) bool { return issuedBefore(at[ids[i]], at[ids[j]]) })
	if is := stored[ids[0]]; is != nil {
		// Only the store has the oldest: it is the answer, as when the
		// value is found in the store alone.
		query := res.Query
		if res = idx.Issuance(is.ID); res == nil {
			res = &Result{Uses: []*audit.Event{}, Revocations: []*audit.Event{}}
		}
		res.Issuance, res.From, res.Query = is, FromStore, query
	}
	res.AlsoMatched = slices.DeleteFunc(ids, func(id string) bool { return id == res.Issuance.ID })
	return res
}

// fromStore finds an issuance by every store index q could be. It returns
// the issuance, the kind and shown form of the match, and the other
// issuances q names (under another ref kind, or an all-digit serial that
// reads as hex and as decimal), like Index.Lookup: of the first reading of
// q that finds anything, every issuance found, oldest first.
func (l *Live) fromStore(ctx context.Context, q string) (*broker.Issuance, string, string, []string, error) {
	cands, err := candidates(q)
	if err != nil {
		return nil, "", "", nil, err
	}
	type hit struct {
		is   *broker.Issuance
		kind string
	}
	var hits []hit
	find := func(k broker.RefKind, v, kind string) error {
		sctx, cancel := context.WithTimeout(ctx, l.o.StoreTimeout)
		defer cancel()
		var is *broker.Issuance
		var err error
		if k == "" {
			is, err = l.o.Store.GetIssuance(sctx, v)
		} else {
			is, err = l.o.Store.FindIssuance(sctx, k, v)
		}
		switch {
		case errors.Is(err, broker.ErrNotFound):
			return nil
		case err != nil:
			return broker.Unavailable("store_unavailable", time.Second, err)
		}
		if is != nil && !slices.ContainsFunc(hits, func(h hit) bool { return h.is.ID == is.ID }) {
			hits = append(hits, hit{is: is, kind: kind})
		}
		return nil
	}
	for _, c := range cands {
		hits = hits[:0]
		var err error
		switch c.kind {
		case KindFingerprint, KindCredential:
			err = find(broker.RefFingerprint, c.key, c.kind)
		case KindSerial:
			// The store matches exact values: ask for the serial in the
			// form Vault wrote it, whatever spelling q used, under every
			// reading (hex and decimal for an all-digit value).
			for _, s := range c.serials {
				if err = find(broker.RefSerial, vaultSerial(s), KindSerial); err != nil {
					break
				}
			}
		default:
			if strings.HasPrefix(c.key, broker.PrefixIssuance) {
				err = find("", c.key, KindIssuanceID)
				break
			}
			if strings.HasPrefix(c.key, broker.PrefixRevocation) {
				is, also, err := l.namedByRevocation(ctx, c.key)
				if err != nil {
					return nil, "", "", nil, err
				}
				if is != nil {
					return is, KindRevocationID, c.shown, also, nil
				}
			}
			kinds := []broker.RefKind{broker.RefAccessor, broker.RefJTI, broker.RefLeaseID, broker.RefUsername, broker.RefSerial, broker.RefRequestID}
			if fp, ok := NormalizeFingerprint(c.key); ok && fp == c.key {
				// A canonical "sha256:<hex>" (what SafeQuery sends for a
				// pasted credential) is this reading's key and its
				// fingerprint reading's: candidates keeps one of the two.
				kinds = append(kinds, broker.RefFingerprint)
			}
			for _, k := range kinds {
				if err = find(k, c.key, string(k)); err != nil {
					break
				}
			}
		}
		if err != nil {
			return nil, "", "", nil, err
		}
		if len(hits) == 0 {
			continue
		}
		sort.SliceStable(hits, func(i, j int) bool { return hits[i].is.IssuedAt.Before(hits[j].is.IssuedAt) })
		var also []string
		for _, h := range hits[1:] {
			also = append(also, h.is.ID)
		}
		return hits[0].is, hits[0].kind, c.shown, also, nil
	}
	return nil, "", "", nil, notFound()
}

// maxRevocationProbes bounds the issuance lookups namedByRevocation makes
// for one revocation id.
const maxRevocationProbes = 8

// namedByRevocation finds in the store the issuances the revocation id
// names, as the index finds them in the revocation's events (its selected
// issuance, and those it revoked, has pending or failed): a revocation
// made through another instance has its events in that instance's log
// only, its record in the store. One GetRevocation, then GetIssuance of the
// named ids in id order until one is stored (at most maxRevocationProbes):
// issuance ids are ULIDs made when issued, so that is the oldest stored. It
// returns that issuance and the other named ids, in id order, those found
// not stored last (as Index.Lookup puts the ids it has no issue event of);
// nil when the store has no such revocation or none of the ids probed.
func (l *Live) namedByRevocation(ctx context.Context, id string) (*broker.Issuance, []string, error) {
	sctx, cancel := context.WithTimeout(ctx, l.o.StoreTimeout)
	r, err := l.o.Store.GetRevocation(sctx, id)
	cancel()
	switch {
	case errors.Is(err, broker.ErrNotFound):
		return nil, nil, nil
	case err != nil:
		return nil, nil, broker.Unavailable("store_unavailable", time.Second, err)
	}
	ids := append([]string{r.Selector.IssuanceID}, r.Revoked...)
	ids = append(ids, r.Pending...)
	for _, f := range r.Failed {
		ids = append(ids, f.IssuanceID)
	}
	ids = slices.DeleteFunc(ids, func(s string) bool { return s == "" })
	slices.Sort(ids)
	ids = slices.Compact(ids)
	for i, iid := range ids[:min(len(ids), maxRevocationProbes)] {
		sctx, cancel := context.WithTimeout(ctx, l.o.StoreTimeout)
		is, err := l.o.Store.GetIssuance(sctx, iid)
		cancel()
		switch {
		case errors.Is(err, broker.ErrNotFound):
			continue
		case err != nil:
			return nil, nil, broker.Unavailable("store_unavailable", time.Second, err)
		}
		return is, append(slices.Clone(ids[i+1:]), ids[:i]...), nil
	}
	return nil, nil, nil
}

// Report builds the report over this instance's log, with the active
// credentials of every instance from the store.
func (l *Live) Report(ctx context.Context) (*Report, error) {
	if err := l.refreshWithin(ctx); err != nil {
		return nil, err
	}
	now := l.o.Now()
	idx := l.idx.Load()
	in := ReportInput{Now: now, Events: idx.Events()}
	if l.o.Policy != nil {
		in.Policy = l.o.Policy()
	}
	st := idx.Stats()
	if st.Dropped > 0 {
		in.Notes = append(in.Notes, fmt.Sprintf("the in-memory index keeps the last %d events; %d older ones are not covered", st.Max, st.Dropped))
	}
	in.Notes = append(in.Notes, "events of this broker instance's audit log only; active credentials of all instances come from the store")
	if l.o.Store != nil {
		sctx, cancel := context.WithTimeout(ctx, l.o.StoreTimeout)
		active, err := l.o.Store.ListIssuances(sctx, broker.IssuanceFilter{ActiveAt: now})
		cancel()
		if err != nil {
			return nil, broker.Unavailable("store_unavailable", time.Second, err)
		}
		in.Active = nilSafe(active)
	}
	return BuildReport(in)
}
