// Package auditfile is the append-only JSON Lines audit sink (broker.AuditSink).
//
// One writer goroutine owns the file. Concurrent Appends are sealed into the
// hash chain in arrival order and written as a batch (group commit): one
// write() and one fsync per batch, or, with Options.Journal, one direct write
// into the journal (journal.go) and one write() to the file. Append returns
// nil only once its batch is durable. When a write or sync fails, every
// caller of the batch gets broker.ErrUnavailable, the file is truncated back
// to the end of the last durable line and the chain rolls back with it, so
// the next line links to the last durable one; the sink recovers by itself on
// the next Append (or Ping) once the disk works again.
//
// The sink acknowledges a batch only while its path still names the file it
// writes (checked after every batch, on a ticker, and before a rotation):
// when the file was replaced or moved away underneath, it copies its lines
// to <path>.displaced-<time> and fails until the path holds them again;
// when it was truncated in place (logrotate's copytruncate), it fails the
// same way, writing nothing more to it.
//
// With a Signer, the sink appends a signed checkpoint every CheckpointEvery
// events, at least every CheckpointInterval when there were events since the
// last one, before rotating a file, and on Close.
package auditfile

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// Defaults.
const (
	DefaultCheckpointEvery    = 1000
	DefaultCheckpointInterval = 60 * time.Second
	DefaultMaxBatch           = 256
	DefaultDeferFor           = 20 * time.Millisecond
	// rotatedLayout is the UTC timestamp suffix of rotated files: fixed
	// width, sortable as text, no colons.
	rotatedLayout = "20060102T150405.000000000Z"
	signTimeout   = 5 * time.Second
	// pathCheckEvery bounds the ticker's period: an idle sink finds out
	// within it that its path no longer names its file (checkPath). It is
	// the default checkpoint tick (DefaultCheckpointInterval/4).
	pathCheckEvery = 15 * time.Second
	// displacedInfix names the copy the sink keeps of its file when the
	// path no longer names it: <Path>.displaced-<UTC timestamp>. Not a
	// rotated name: readers take it only when named.
	displacedInfix = ".displaced-"
	// partialSuffix names a displaced copy being written.
	partialSuffix = ".partial"
)

// Options configure a Sink.
type Options struct {
	// Path of the audit file. Required.
	Path string
	// ChainID names the chain. Empty: resume the chain of the file (or of
	// its newest rotated sibling when the file is empty), else start a new
	// "chn_<ULID>". When set and the file holds another chain, Open fails.
	ChainID string
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Signer signs checkpoints; nil writes none.
	Signer audit.Signer
	// CheckpointEvery is the number of events between checkpoints; default
	// DefaultCheckpointEvery.
	CheckpointEvery int
	// CheckpointInterval bounds the time between a checkpoint and the next
	// one when there were events in between; default
	// DefaultCheckpointInterval. The sink checks it on every batch and on a
	// ticker (every quarter of it, or more often), on which it checkpoints
	// when the next tick would come after the interval is over: an idle
	// sink's checkpoints come at most the interval apart, usually more than
	// 3/4 of it.
	CheckpointInterval time.Duration
	// Journal makes each batch durable with one direct, synchronous write
	// into a preallocated journal next to the file (JournalPath) instead of
	// an fsync of the file; the batch is then appended to the file without
	// a sync. The file is fsynced when the journal is full, before a
	// rotation and on Close, and Open replays the journal into the file
	// after a crash. Where direct I/O is not available (some file systems,
	// not Linux) or the journal cannot be preallocated, the sink logs so and
	// fsyncs the file per batch. Without Journal (or
	// with NoFsync) a journal left by an earlier run is replayed and
	// removed.
	Journal bool
	// JournalBytes is the journal's size, 16 KiB to 1 GiB; default
	// DefaultJournalBytes. A batch takes a multiple of 4 KiB.
	JournalBytes int64
	// NoFsync skips the fsync of each batch: Append then returns once the
	// batch is written to the OS, not once it is on disk. For tests and
	// benchmarks; Close still syncs.
	NoFsync bool
	// MaxBatch caps the events of one write; default DefaultMaxBatch.
	MaxBatch int
	// DeferFor bounds how long an AppendDeferred event waits for an
	// Append to share its write and fsync with; default DefaultDeferFor.
	DeferFor time.Duration
	// Logger; default discards.
	Logger *slog.Logger
	// OnWrite, if set, is called from the sink's writer after every
	// successful batch with the time its write and fsync took (sealing and
	// waiting in the queue not included): the disk's share of an event's
	// wait, against the group commit's.
	OnWrite func(time.Duration)
	// RotateBytes rotates the file once it reaches this size: it is renamed
	// to <Path>.<UTC timestamp> and the same chain continues in a new file.
	// The timestamp is the rotation's time, but never before the chain's
	// last line and always after the newest rotated file, so the names sort
	// in chain order even after the clock stepped back. 0 never rotates.
	RotateBytes int64
	// RotateEvery rotates the file once it has been written to for this
	// long (checked on writes and on the sink's ticker, at least every
	// quarter of it). 0 never rotates by age. Either limit rotates.
	RotateEvery time.Duration
	// RecordResumed: the caller records the range UnsignedResumed returns
	// in an event of its own (the broker's start event) and calls
	// ResumedRecorded once that event is durable. Until then the sink
	// writes no checkpoint when Open adopted such a range: every
	// checkpoint would sign those lines, and none would say they were
	// adopted. Interval, count and rotation checkpoints wait (a rotation
	// waits with them), and Close writes no final checkpoint, so the next
	// Open adopts the lines again. Without it (or with no range) the sink
	// checkpoints as usual.
	RecordResumed bool
}

// Stats are counters for metrics.
type Stats struct {
	Events             uint64 // events made durable
	Batches            uint64 // successful writes
	Checkpoints        uint64 // checkpoints made durable
	Failures           uint64 // failed batches
	CheckpointFailures uint64 // checkpoints that could not be signed
	Rotations          uint64
	Seq                uint64 // seq of the last durable line
	// CheckpointSeq is the seq of the last durable checkpoint line; 0
	// when there is none, or when Open found none (of its own) in the
	// file it resumed, or checked none (maxFailedChecks), and none was
	// written since.
	CheckpointSeq uint64
	Healthy       bool // the last write succeeded
}

// file is what the sink needs of an *os.File (a seam for tests).
type file interface {
	io.Writer
	io.ReaderAt
	Sync() error
	Truncate(size int64) error
	Stat() (os.FileInfo, error)
	Close() error
}

// openOSFile opens the audit file for appending; create: or creates it.
func openOSFile(path string, create bool) (file, error) {
	flag := os.O_RDWR | os.O_APPEND
	if create {
		flag |= os.O_CREATE
	}
	return os.OpenFile(path, flag, 0o600)
}

// seams lets tests replace the file and the checkpoint ticker.
type seams struct {
	openFile    func(path string, create bool) (file, error)
	openJournal func(path string) (journalFile, error)
	openReplay  func(path string) (replayFile, error)
	createCopy  func(path string) (*os.File, error) // keepDisplaced's new file
	tick        <-chan time.Time                    // nil: a real ticker
	// noLock skips the lock: a test's abandoned sink stands for a process
	// that died, whose lock the kernel released.
	noLock bool
}

type request struct {
	ev *audit.Event
	// evs, when not nil, are the events of one AppendBatch (ev is nil):
	// sealed into the same batch, all or none.
	evs      []*audit.Event
	done     chan error  // buffered 1; nil for a deferred or Enqueue request
	deferred func(error) // called with the outcome when done is nil
	// waits says a caller waits for the outcome through deferred (an
	// Enqueue): the request is committed at once, as an Append's is, not
	// held for a later batch as a deferred one is.
	waits bool
}

// finish tells the request's caller what happened to its event.
func (r *request) finish(err error) {
	if r.done != nil {
		r.done <- err
		return
	}
	if r.deferred != nil {
		r.deferred(err)
	}
}

// state is the chain state a batch is sealed into; it becomes the durable
// state only once the batch is.
type state struct {
	chain   *audit.Chain
	sinceCP int       // events since the last checkpoint
	cpAt    time.Time // time of the last checkpoint (or of Open)
	cpSeq   uint64    // seq of the last checkpoint line (0: none known)
	cps     int       // checkpoints in the batch being built
}

func (st state) clone() state {
	st.chain = st.chain.Clone()
	st.cps = 0
	return st
}

// Sink is the file audit sink. It is safe for concurrent use.
type Sink struct {
	o        Options
	log      *slog.Logger
	openFile func(string, bool) (file, error)
	openJrnl func(string) (journalFile, error)
	openRply func(string) (replayFile, error)
	mkCopy   func(string) (*os.File, error)
	lock     *os.File // holds the flock on LockPath; nil without one

	reqs      chan *request
	probes    chan chan error
	tick      <-chan time.Time
	tickEvery time.Duration // the ticker's period (also with a test's tick)
	stopTick  func()
	quit      chan struct{}
	done      chan struct{}

	mu     sync.RWMutex // closed, against Append/Ping sending after Close
	closed bool

	closeOnce sync.Once
	closeErr  error

	// timers holds stopped timers for AppendWithin's bounded wait.
	timers sync.Pool

	// overflow holds, in order, the deferred requests that found the
	// queue full (AppendDeferred); one feeder goroutine at a time queues
	// them once there is room, running while any is held (feeding). At
	// most maxOverflow are held: past it a deferred event is refused (its
	// done gets the error). feeders lets Close wait for the feeder's end.
	overflowMu  sync.Mutex
	overflow    []*request
	held        int  // overflow's requests and the one the feeder is queueing
	closing     bool // Close has begun: nothing more is held
	maxOverflow int
	feeders     sync.WaitGroup

	statsMu sync.Mutex
	stats   Stats

	chainID string // set by Open; a rotation continues the same chain
	// resumed is the range of lines no checkpoint covered when Open
	// resumed the chain (nil: none); see UnsignedResumed.
	resumed *UnsignedRange
	// unchecked is the seq and key id of the newest checkpoint Open passed
	// over because it names a key the sink cannot check (ownCheckpoint):
	// said in its WARN, which otherwise names only an unclean stop or
	// added lines (0: none).
	unchecked    uint64
	uncheckedKey string
	// unknownKids are the key ids an OwnVerifier answered "unknown" for
	// while Open read back to the last checkpoint: not asked again (a
	// Vault call each when it could not read its keys), so that a long
	// range of another key's checkpoints costs one call per key id.
	unknownKids map[string]bool
	// failedChecks counts the checkpoint signatures Open checked that did
	// not end the count (ownCheckpoint); past maxFailedChecks it checks
	// no more, and capWarned says it logged so.
	failedChecks int
	capWarned    bool
	capSeq       uint64 // the first checkpoint line not checked
	// holdCP: no checkpoint until the caller recorded resumed
	// (Options.RecordResumed, ResumedRecorded).
	holdCP atomic.Bool

	// Owned by the writer goroutine (and by Open before it starts).
	f     file
	j     *journal // nil: fsync the file per batch
	good  int64    // size of f up to the end of the last durable line
	dirty int64    // bytes of the last failed write, which may linger
	// resync: an fsync of the file failed while the journal held frames.
	// The kernel may have dropped the pages it could not write (Linux marks
	// them clean), so a later fsync that succeeds proves nothing about
	// them: the journal's frames are their only durable copy until
	// syncAndReset has written them to the file again and synced it.
	// Only ever set with a journal, and j.broken with it (cleared only by
	// a reset, after resync is): the next write goes through syncAndReset.
	resync     bool
	st         state
	buf        bytes.Buffer
	cpBackoff  time.Time // no checkpoint signing before this, after a failure
	lastRotate time.Time
	fileStart  time.Time // when the current file was started (for RotateEvery)

	fid os.FileInfo // f's identity: whether the path still names f (checkPath)
	// lostFound, when not "", is what the path named (checkPath's found)
	// when it no longer named f and f's lines could not be copied yet
	// (keepDisplaced): f is stranded. It stays open, as the only holder of
	// them, and no write goes to it until the path names it again
	// (settleStranded).
	lostFound string
	// displaced: the sink let go of a file the path no longer named, or
	// named truncated (letGo; fid is nil then); until a reopen passes
	// checkReopened's full check, nothing else at the path is taken for
	// it, and the ticker only tries that reopen (onTick).
	displaced bool
}

var (
	_ broker.AuditSink         = (*Sink)(nil)
	_ broker.BatchAuditSink    = (*Sink)(nil)
	_ broker.DeferredAuditSink = (*Sink)(nil)
	_ broker.BoundedAuditSink  = (*Sink)(nil)
	_ broker.QueuingAuditSink  = (*Sink)(nil)
	_ broker.Pinger            = (*Sink)(nil)
)

var errClosed = errors.New("auditfile: sink is closed")

// Open opens (or creates, mode 0600) the audit file for appending and resumes
// its chain from the last complete line. A torn last line (no trailing
// newline) was never acknowledged: it is truncated away with a warning.
func Open(o Options) (*Sink, error) {
	return open(o, seams{})
}

func open(o Options, sm seams) (*Sink, error) {
	var errs []error
	if o.Path == "" {
		errs = append(errs, errors.New("path: required"))
	}
	if o.CheckpointEvery < 0 {
		errs = append(errs, errors.New("checkpoint_every: must not be negative"))
	}
	if o.CheckpointInterval < 0 {
		errs = append(errs, errors.New("checkpoint_interval: must not be negative"))
	}
	if o.MaxBatch < 0 {
		errs = append(errs, errors.New("max_batch: must not be negative"))
	}
	if o.DeferFor < 0 {
		errs = append(errs, errors.New("defer_for: must not be negative"))
	}
	if o.RotateBytes < 0 {
		errs = append(errs, errors.New("rotate_bytes: must not be negative"))
	}
	if o.RotateEvery < 0 {
		errs = append(errs, errors.New("rotate_every: must not be negative"))
	}
	if o.JournalBytes != 0 && (o.JournalBytes < MinJournalBytes || o.JournalBytes > MaxJournalBytes) {
		errs = append(errs, fmt.Errorf("journal_bytes: must be between %d and %d", MinJournalBytes, MaxJournalBytes))
	}
	if o.ChainID != "" {
		if err := audit.ValidChainID(o.ChainID); err != nil {
			errs = append(errs, fmt.Errorf("chain_id: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("auditfile: %w", err)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.CheckpointEvery == 0 {
		o.CheckpointEvery = DefaultCheckpointEvery
	}
	if o.CheckpointInterval == 0 {
		o.CheckpointInterval = DefaultCheckpointInterval
	}
	if o.MaxBatch == 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	if o.DeferFor == 0 {
		o.DeferFor = DefaultDeferFor
	}
	if o.JournalBytes == 0 {
		o.JournalBytes = DefaultJournalBytes
	}
	o.JournalBytes = (o.JournalBytes + journalBlock - 1) &^ (journalBlock - 1)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if sm.openFile == nil {
		sm.openFile = openOSFile
	}
	if sm.openJournal == nil {
		sm.openJournal = openDirect
	}
	if sm.openReplay == nil {
		sm.openReplay = openReplayFile
	}
	if sm.createCopy == nil {
		sm.createCopy = createNew
	}
	s := &Sink{
		o:        o,
		log:      o.Logger.With("path", o.Path),
		openFile: sm.openFile,
		openJrnl: sm.openJournal,
		openRply: sm.openReplay,
		mkCopy:   sm.createCopy,
		reqs:     make(chan *request, o.MaxBatch),
		// A few minutes of refusals on a disk whose writes hang; each
		// held event is about 1 KB.
		maxOverflow: max(64*o.MaxBatch, 16384),
		probes:      make(chan chan error),
		quit:        make(chan struct{}),
		done:        make(chan struct{}),
	}
	if !sm.noLock {
		lock, err := lockFile(o.Path, s.log)
		if err != nil {
			return nil, err
		}
		s.lock = lock
	}
	if err := s.load(); err != nil {
		s.unlock()
		if s.f != nil {
			_ = s.f.Close()
		}
		if s.j != nil {
			_ = s.j.f.Close()
		}
		return nil, err
	}
	s.stats.Seq, _ = s.st.chain.Head()
	s.stats.CheckpointSeq = s.st.cpSeq
	s.stats.Healthy = true
	s.fileStart = o.Now()
	// The ticker checks the path (onTick), checkpoints and rotates by age.
	s.tickEvery = pathCheckEvery
	if o.Signer != nil {
		s.tickEvery = min(s.tickEvery, max(o.CheckpointInterval/4, 10*time.Millisecond))
	}
	if o.RotateEvery > 0 {
		s.tickEvery = min(s.tickEvery, max(o.RotateEvery/4, 10*time.Millisecond))
	}
	if sm.tick != nil {
		s.tick = sm.tick
	} else {
		t := time.NewTicker(s.tickEvery)
		s.tick, s.stopTick = t.C, t.Stop
	}
	go s.run()
	return s, nil
}

// load opens the file, drops a torn tail and resumes or starts the chain.
func (s *Sink) load() error {
	jpath := JournalPath(s.o.Path)
	epoch, frames, repaired, err := replayJournal(jpath, s.o.Path, s.openRply)
	fresh := errors.Is(err, errJournalHeader)
	switch {
	case fresh:
		s.log.Warn("audit: journal header unreadable (torn by a crash during a reset); the audit file was durable then, nothing to replay", "journal", jpath, "err", err)
	case err != nil:
		return fmt.Errorf("auditfile: %w", err)
	case frames > 0:
		s.log.Warn("audit: replayed the journal after an unclean stop", "journal", jpath, "batches", frames, "bytes_restored", repaired)
	}
	f, err := s.openFile(s.o.Path, true)
	if err != nil {
		return fmt.Errorf("auditfile: open: %w", err)
	}
	s.f = f
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("auditfile: stat: %w", err)
	}
	s.fid = fi
	last, end, err := lastLine(f, fi.Size())
	if err != nil {
		return fmt.Errorf("auditfile: read last line: %w", err)
	}
	if end < fi.Size() {
		s.log.Warn("audit: dropping torn last line (no trailing newline, never acknowledged)", "bytes", fi.Size()-end)
		if err := f.Truncate(end); err != nil {
			return fmt.Errorf("auditfile: truncate torn line: %w", err)
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("auditfile: sync: %w", err)
		}
	}
	s.good = end
	var rb readBack
	if last == nil {
		if last, rb, err = s.lastRotatedLine(); err != nil {
			return err
		}
	} else if rb, err = eventsSinceCheckpoint(f, end, s.ownCheckpoint, s.scanProgress(s.o.Path, end)); err != nil {
		return fmt.Errorf("auditfile: read the lines after the last checkpoint: %w", err)
	} else if rb.cpSeq == 0 {
		// No checkpoint of the sink's in the file: a crash right after
		// a rotation leaves the last one at the end of the rotated file
		// it continues.
		s.logTooLong(s.o.Path, rb)
		if prev, ok := s.rotatedReadBack(f, end); ok {
			rb.lines += prev.lines
			rb.cpSeq = prev.cpSeq
			rb.tooLong += prev.tooLong
		}
	} else {
		s.logTooLong(s.o.Path, rb)
	}
	sinceCP, cpSeq := rb.lines, rb.cpSeq
	now := s.o.Now()
	var c *audit.Chain
	if last != nil {
		if c, err = audit.ResumeChain(last); err != nil {
			return fmt.Errorf("auditfile: %w", err)
		}
		if s.o.ChainID != "" && s.o.ChainID != c.ID() {
			return fmt.Errorf("auditfile: %s continues chain %q, options name chain %q", s.o.Path, c.ID(), s.o.ChainID)
		}
		seq, _ := c.Head()
		s.log.Info("audit: chain resumed", "chain", c.ID(), "seq", seq)
		if sinceCP > 0 {
			// The next checkpoint signs these lines as this sink's, and
			// nothing in the files can then tell them from lines it
			// wrote: say so where the file's writers cannot undo it.
			first := resumedFirst(seq, uint64(sinceCP), cpSeq)
			s.resumed = &UnsignedRange{FirstSeq: first, LastSeq: seq, Lines: sinceCP, LastCheckpointSeq: cpSeq, TooLongLines: rb.tooLong}
			s.holdCP.Store(s.o.RecordResumed)
			msg := "audit: resuming after lines no checkpoint covers; the next checkpoint signs them: they were written before an unclean stop, or added to the file while no broker held it"
			attrs := []any{"chain", c.ID(), "unsigned_lines", sinceCP, "first_unsigned_seq", first,
				"last_unsigned_seq", seq, "last_checkpoint_seq", cpSeq}
			if s.unchecked != 0 {
				// After a deliberate change of checkpoint key the lines
				// the old key signed are counted too: say why.
				msg = "audit: resuming after lines no checkpoint covers (none by this broker's key); the next checkpoint signs them: the checkpoint at unchecked_checkpoint_seq is signed by key unchecked_key_id, which this broker does not check (after a change of checkpoint key, an over-report back to the last checkpoint by this broker's key, or to the file's first line; a forger could name another key too: audit verify with both keys tells), and the lines may also have been written before an unclean stop, or added to the file while no broker held it"
				if cpSeq != 0 {
					msg = strings.Replace(msg, "(none by this broker's key)", "(none by this broker's key after last_checkpoint_seq)", 1)
				}
				attrs = append(attrs, "unchecked_checkpoint_seq", s.unchecked, "unchecked_key_id", s.uncheckedKey)
			}
			if cpSeq == 0 {
				msg += " (last_checkpoint_seq 0: none of this broker's in the file, nor in the newest rotated file when the file continues it; the lines counted from the file's first)"
			}
			if s.capWarned {
				// A checkpoint of its own may be before the range's first
				// line: it was not checked (mayCheck).
				msg += "; the checkpoints from unchecked_from_seq back were counted in without a check (too many after them did not verify: an over-report)"
				attrs = append(attrs, "unchecked_from_seq", s.capSeq)
			}
			s.log.Warn(msg, attrs...)
		}
	} else {
		id := s.o.ChainID
		if id == "" {
			u, err := ulid.New(ulid.Timestamp(now), rand.Reader)
			if err != nil {
				return fmt.Errorf("auditfile: chain id: %w", err)
			}
			id = "chn_" + u.String()
		}
		c = audit.NewChain(id)
		s.log.Info("audit: chain started", "chain", id)
	}
	// The events an unclean stop left after the last checkpoint count
	// towards the next one (CheckpointEvery).
	s.st = state{chain: c, cpAt: now, sinceCP: sinceCP, cpSeq: cpSeq}
	s.chainID = c.ID()
	syncDir(s.o.Path, s.log)
	return s.startJournal(epoch, fresh)
}

// resumedFirst is the seq of the first of the lines lines after the
// checkpoint at cpSeq (0: none) up to the chain's last line, seq: counted
// back from seq, but not past the checkpoint. More lines than seqs after
// it (a line that is not the chain's, one that does not parse or is too
// long to read, added to the file; or seqs that do not count up: an edited
// file) start the range right after the checkpoint, or at 1 when there is
// none, so that the record keeps last_checkpoint_seq < first_seq <=
// last_seq and counts every line read (audit verify then reports the added
// line, not the start event that records it). A checkpoint at or after seq
// (an edited file: seqs that go back after it) leaves the count from seq.
func resumedFirst(seq, lines, cpSeq uint64) uint64 {
	switch {
	case cpSeq < seq && lines > seq-cpSeq:
		return cpSeq + 1
	case lines > seq:
		return 1
	}
	return seq - lines + 1
}

// startJournal sets up the journal after load, continuing after epoch; or,
// when the sink fsyncs instead, removes a journal left by an earlier run so
// that its frames are never replayed over a file that has moved on.
func (s *Sink) startJournal(epoch uint64, fresh bool) error {
	jpath := JournalPath(s.o.Path)
	without := func() error {
		if err := os.Remove(jpath); err == nil {
			syncDir(jpath, s.log)
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("auditfile: remove the journal: %w", err)
		}
		return nil
	}
	if !s.o.Journal || s.o.NoFsync {
		return without()
	}
	// An epoch starts where the file is durable.
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("auditfile: sync: %w", err)
	}
	_, head := s.st.chain.Head()
	j, err := openJournal(s.openJrnl, jpath, s.o.JournalBytes, fresh, epoch, s.good, head)
	switch {
	case errors.Is(err, ErrNoDirectIO):
		s.log.Info("audit: no direct I/O on this file system; fsyncing the audit file per batch instead of the journal", "err", err)
		return without()
	case errors.Is(err, errPreallocate):
		s.log.Warn("audit: cannot preallocate the journal; fsyncing the audit file per batch instead", "journal", jpath, "bytes", s.o.JournalBytes, "err", err)
		return without()
	case err != nil:
		return fmt.Errorf("auditfile: journal: %w", err)
	}
	s.j = j
	syncDir(jpath, s.log)
	return nil
}

// syncAndReset makes the file durable up to good and starts a new journal
// epoch there: the journal's frames are no longer needed.
func (s *Sink) syncAndReset() error {
	if s.resync {
		if err := s.rewriteEpoch(); err != nil {
			s.j.broken = true
			return err
		}
	}
	if err := s.syncFile(); err != nil {
		return err
	}
	if s.j == nil {
		return nil
	}
	_, head := s.st.chain.Head()
	return s.j.reset(s.good, head)
}

// syncFile fsyncs the file. With a journal, a failure keeps the journal's
// frames until they are written again (resync) and breaks the journal, so
// the next write goes through syncAndReset first. Only frames that reach
// the last acknowledged line need that: when they end before it, a batch
// too large for the journal came after them and an fsync that succeeded
// made it durable, with every frame before it, and nothing was written
// since (a write goes through syncAndReset first); the frames could not
// rewrite the file up to good either (epochLines).
func (s *Sink) syncFile() error {
	if err := s.f.Sync(); err != nil {
		if s.j != nil {
			s.j.broken = true
			if s.j.base <= s.good && s.good <= s.j.at {
				s.resync = true
			}
		}
		return fmt.Errorf("fsync: %w", err)
	}
	s.resync = false
	return nil
}

// rewriteEpoch replaces what the file holds after the journal epoch's base
// with the epoch's frames, read back from the journal: after a failed fsync
// the file's pages for them may never reach the disk unless written again.
// Only frames up to the last acknowledged line (good) are taken: a frame
// after it belongs to a write that failed.
func (s *Sink) rewriteEpoch() error {
	base, b, err := s.epochLines()
	if err != nil {
		return err
	}
	if err := s.f.Truncate(base); err != nil {
		return fmt.Errorf("rewrite from the journal: truncate: %w", err)
	}
	n, err := s.f.Write(b)
	if err == nil && n != len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("rewrite from the journal: write: %w", err)
	}
	s.log.Warn("audit: rewrote the journal's batches into the file after a failed fsync", "bytes", len(b))
	return nil
}

// epochLines returns the journal epoch's base and the acknowledged lines
// after it (up to good), read back from the journal's frames, once it has
// checked that the epoch is the one the sink wrote and continues f. Only
// frames up to the last acknowledged line (good) are taken: a frame after
// it belongs to a write that failed.
func (s *Sink) epochLines() (base int64, b []byte, err error) {
	jpath := JournalPath(s.o.Path)
	jb, err := os.ReadFile(jpath)
	if err != nil {
		return 0, nil, fmt.Errorf("rewrite from the journal: %w", err)
	}
	js, err := readJournal(jb)
	if err != nil {
		return 0, nil, fmt.Errorf("rewrite from the journal %s: %w", jpath, err)
	}
	if js.epoch != s.j.epoch || js.base != s.j.base {
		return 0, nil, fmt.Errorf("rewrite from the journal %s: it holds epoch %d from byte %d, the sink wrote epoch %d from byte %d", jpath, js.epoch, js.base, s.j.epoch, s.j.base)
	}
	fi, err := s.f.Stat()
	if err != nil {
		return 0, nil, fmt.Errorf("rewrite from the journal: stat: %w", err)
	}
	if err := js.continues(s.f, fi.Size(), jpath, s.o.Path); err != nil {
		return 0, nil, fmt.Errorf("rewrite from the journal: %w", err)
	}
	for _, fr := range js.frames {
		if fr.at+int64(len(fr.batch)) > s.good {
			break
		}
		b = append(b, fr.batch...)
	}
	if end := js.base + int64(len(b)); end != s.good {
		return 0, nil, fmt.Errorf("rewrite from the journal %s: its frames end at byte %d, the last acknowledged line at %d", jpath, end, s.good)
	}
	return js.base, b, nil
}

// rotatedNames returns the names of the rotated siblings of the file
// (<base>.<timestamp>) in dir, oldest first.
func (s *Sink) rotatedNames() (dir string, names []string, err error) {
	dir, base := filepath.Split(s.o.Path)
	if dir == "" {
		dir = "."
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return dir, nil, fmt.Errorf("auditfile: list rotated files: %w", err)
	}
	for _, e := range ents {
		suf, ok := strings.CutPrefix(e.Name(), base+".")
		if !ok || !e.Type().IsRegular() {
			continue
		}
		if _, err := time.Parse(rotatedLayout, suf); err == nil {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return dir, names, nil
}

// lastRotatedLine returns the last line of the newest rotated sibling, so an
// empty file right after a rotation continues the chain, and the number of
// events after that file's last checkpoint and its seq
// (eventsSinceCheckpoint).
func (s *Sink) lastRotatedLine() (last []byte, rb readBack, err error) {
	dir, names, err := s.rotatedNames()
	if err != nil {
		return nil, readBack{}, err
	}
	if len(names) == 0 {
		return nil, readBack{}, nil
	}
	path := filepath.Join(dir, names[len(names)-1])
	f, err := os.Open(path)
	if err != nil {
		return nil, readBack{}, fmt.Errorf("auditfile: open rotated file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, readBack{}, fmt.Errorf("auditfile: stat rotated file: %w", err)
	}
	last, end, err := lastLine(f, fi.Size())
	if err == nil {
		rb, err = eventsSinceCheckpoint(f, end, s.ownCheckpoint, s.scanProgress(path, end))
	}
	if err != nil {
		return nil, readBack{}, fmt.Errorf("auditfile: read rotated file %s: %w", path, err)
	}
	s.logTooLong(path, rb)
	return last, rb, nil
}

// logTooLong says, as an ERROR, that reading the file at path back to its
// last checkpoint passed over lines too long to be read (rb.tooLong).
func (s *Sink) logTooLong(path string, rb readBack) {
	if rb.tooLong == 0 {
		return
	}
	s.log.Error("audit: read past lines longer than any line a broker writes while reading the audit file back to its last checkpoint; they are counted among the lines no checkpoint covers (a corrupted or added line: audit verify reports it)",
		"file", path, "too_long_lines", rb.tooLong, "max_line_bytes", audit.MaxLineBytes, "first_at_byte", rb.tooLongAt)
}

// rotatedReadBack reads the newest rotated file back to its last
// checkpoint of the sink's (eventsSinceCheckpoint) when the first end
// bytes of the live file f, which hold none, continue it (their first line
// is the next seq of the same chain, its prev the hash of the rotated
// file's last line): after a crash right after a rotation the lines no
// checkpoint covers begin after the checkpoint that ends the rotated file.
// ok is false when f does not continue it, or no checkpoint of the sink's
// is in it (the range is then counted from f's first line, as before), or
// it cannot be read (a WARN: the range is then that too). Only the newest
// rotated file is read: a chain with no checkpoint of the sink's in many
// (after a change of checkpoint key) must not make every start read them
// all.
func (s *Sink) rotatedReadBack(f io.ReaderAt, end int64) (rb readBack, ok bool) {
	head, err := firstLine(f, end)
	if err != nil || head == nil {
		return readBack{}, false
	}
	first, err := audit.ParseLine(head)
	if err != nil || first.Seq < 2 {
		return readBack{}, false
	}
	dir, names, err := s.rotatedNames()
	if err != nil || len(names) == 0 {
		return readBack{}, false
	}
	path := filepath.Join(dir, names[len(names)-1])
	warn := func(err error) (readBack, bool) {
		s.log.Warn("audit: cannot read the newest rotated file back to its last checkpoint; the lines no checkpoint covers are counted from the audit file's first line", "file", path, "err", err)
		return readBack{}, false
	}
	rf, err := os.Open(path)
	if err != nil {
		return warn(err)
	}
	defer rf.Close()
	fi, err := rf.Stat()
	if err != nil {
		return warn(err)
	}
	last, lend, err := lastLine(rf, fi.Size())
	if err != nil {
		return warn(err)
	}
	if last == nil || audit.HashLine(last) != first.Prev {
		return readBack{}, false
	}
	if ev, err := audit.ParseLine(last); err != nil || ev.Chain != first.Chain || ev.Seq+1 != first.Seq {
		return readBack{}, false
	}
	// What the read notes of the checkpoints it passes (passedUnchecked,
	// mayCheck) is kept only when the file is read into the range: a
	// checkpoint before the range's first line is not one the resume
	// WARN may name.
	unchecked, uncheckedKey, capWarned, capSeq := s.unchecked, s.uncheckedKey, s.capWarned, s.capSeq
	notRead := func() {
		s.unchecked, s.uncheckedKey, s.capWarned, s.capSeq = unchecked, uncheckedKey, capWarned, capSeq
	}
	if rb, err = eventsSinceCheckpoint(rf, lend, s.ownCheckpoint, s.scanProgress(path, lend)); err != nil {
		notRead()
		return warn(err)
	}
	if rb.cpSeq == 0 {
		notRead()
		return readBack{}, false
	}
	s.logTooLong(path, rb)
	return rb, true
}

// firstLine returns the first line of the first end bytes of r (without
// its newline); nil when there is none, or it is longer than
// audit.MaxLineBytes.
func firstLine(r io.ReaderAt, end int64) ([]byte, error) {
	b := make([]byte, min(end, int64(audit.MaxLineBytes)+1))
	if _, err := r.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return nil, nil
	}
	return b[:i], nil
}

// readBack is what eventsSinceCheckpoint found reading a file back to the
// last checkpoint.
type readBack struct {
	lines int    // the lines after that checkpoint, however many
	cpSeq uint64 // its seq; 0 when none ends the count before the file's first line
	// tooLong counts those of the lines longer than audit.MaxLineBytes
	// (counted in lines, unread); tooLongAt is the byte offset of the
	// first of them in the file.
	tooLong   int
	tooLongAt int64
}

// eventsSinceCheckpoint counts the lines after the last checkpoint line in
// the first end bytes of r (which end with a newline), reading backwards,
// however many there are (back to the file's first line), and returns that
// checkpoint's seq: the range the sink adopts is recorded whole (a crash
// loop lengthens it, each failed start leaving its lines unsigned). Only a
// checkpoint line that signed reports holding ends the count: one that
// does not (typed checkpoint, but forged) is counted as any other line, so
// that it cannot hide the lines before it from the range the sink adopts.
// Only lines that name a checkpoint are parsed (a scan of the rest counts
// their newlines): one that does not parse is counted too, an over-report
// rather than an end. So is a line longer than audit.MaxLineBytes (no
// broker writes one: a corrupted or added line), read past without being
// held whole (readBack.tooLong): one bad line must not stop the broker from
// starting (audit verify reports it). cpSeq is 0 when no checkpoint ends
// the count before the file's first line. progress is called with the
// bytes read so far each time they pass another scanLogBytes (a long read
// back: start-up is not silent while it lasts).
func eventsSinceCheckpoint(r io.ReaderAt, end int64, signed func(*audit.Event) bool, progress func(read int64)) (rb readBack, err error) {
	const chunk = 64 << 10
	word := []byte(audit.TypeCheckpoint)
	var buf []byte // r[pos:pos+len(buf)]: whole lines not counted yet
	pos := end
	every := max(scanLogBytes, 1)
	next := every // the bytes read at which progress is called next
	read := func() ([]byte, error) {
		k := min(int64(chunk), pos)
		pos -= k
		b := make([]byte, k, int(k)+len(buf))
		if _, err := r.ReadAt(b, pos); err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		if done := end - pos; done >= next && progress != nil {
			progress(done)
			next = (done/every + 1) * every
		}
		return b, nil
	}
	tooLong := func(at int64) {
		rb.lines++
		rb.tooLong++
		rb.tooLongAt = at // reading backwards: the last one set is the first
	}
	for {
		i := -1 // the newline before buf's last line
		if len(buf) > 0 {
			i = bytes.LastIndexByte(buf[:len(buf)-1], '\n')
		}
		if i < 0 && pos > 0 {
			if len(buf) > audit.MaxLineBytes+1 {
				// buf is the end of a line too long to hold: read
				// back to its start without keeping it.
				buf = nil
				for pos > 0 {
					b, err := read()
					if err != nil {
						return readBack{}, err
					}
					if j := bytes.LastIndexByte(b, '\n'); j >= 0 {
						buf = b[:j+1]
						break
					}
				}
				tooLong(pos + int64(len(buf)))
				continue
			}
			b, err := read()
			if err != nil {
				return readBack{}, err
			}
			buf = append(b, buf...)
			continue
		}
		if len(buf) == 0 {
			return rb, nil // the file's first line was counted
		}
		line := buf[i+1 : len(buf)-1]
		switch {
		case len(line) > audit.MaxLineBytes:
			tooLong(pos + int64(i+1))
		default:
			if bytes.Contains(line, word) {
				if ev, err := audit.ParseLine(line); err == nil && ev.Type == audit.TypeCheckpoint && signed(ev) {
					rb.cpSeq = ev.Seq
					return rb, nil
				}
			}
			rb.lines++
		}
		buf = buf[:i+1]
	}
}

// scanLogBytes is how many bytes Open reads back to the last checkpoint
// between two INFO lines saying so (eventsSinceCheckpoint): a file with
// no checkpoint of the sink's (never checkpointed, or the first start
// after a change of checkpoint key) is read whole, seconds a GB (3.3 s for
// 1 GB in the page cache on the reference machine). A variable for tests.
var scanLogBytes int64 = 256 << 20

// scanProgress logs the progress of Open's read back through the first
// end bytes of the file at path (eventsSinceCheckpoint).
func (s *Sink) scanProgress(path string, end int64) func(read int64) {
	var file []any // s.log names s.o.Path
	if path != s.o.Path {
		file = []any{"file", path} // the newest rotated file
	}
	return func(read int64) {
		s.log.Info("audit: start-up is reading the audit file back to its last checkpoint, to count the lines no checkpoint covers",
			append(file, "bytes_read", read, "of_bytes", end)...)
	}
}

// maxFailedChecks bounds the checkpoint signatures Open checks that do
// not end the count (ownCheckpoint): whoever can write the file could
// otherwise add lines typed checkpoint under the sink's key id, each a
// signature check (a VerifyOwn for a transit signer, a Vault call when it
// cannot read its keys), 100,000 of them 17 s of start-up. Past it,
// further checkpoint lines are counted among the adopted lines
// unchecked: a genuine checkpoint behind them too, an over-report (the
// range is longer, never shorter). audit verify checks them all.
const maxFailedChecks = 100

// mayCheck reports whether ownCheckpoint may check the signature of the
// checkpoint line ev (maxFailedChecks), and logs once when it may not.
func (s *Sink) mayCheck(ev *audit.Event) bool {
	if s.failedChecks < maxFailedChecks {
		return true
	}
	if !s.capWarned {
		s.capWarned, s.capSeq = true, ev.Seq
		s.log.Warn("audit: stopped checking checkpoint signatures while reading back to the last checkpoint: failed_checks lines typed checkpoint did not verify (forged, or by a key this broker cannot check); the checkpoints from unchecked_from_seq back are counted among the lines no checkpoint covers without being checked (an over-report; audit verify checks them all)",
			"failed_checks", s.failedChecks, "unchecked_from_seq", ev.Seq)
	}
	return false
}

// ownCheckpoint reports whether the checkpoint line ev (found by
// eventsSinceCheckpoint) ends the lines no checkpoint covers: it must sign
// the line before it (head_seq, head_hash); and when it names the key of
// the sink's own Ed25519 signer, its signature must verify with it. A line
// typed checkpoint that whoever could write the file added, with a
// signature the key never made, then counts as one of the lines the sink
// adopts, as do the lines before it. The same for a signer that checks its
// own (OwnVerifier: a Vault transit key's versions). A checkpoint the sink
// cannot check here (another key id: one before a change of key, or one a
// forger named so that it would not be checked; a transit version it
// cannot read) does not end the count either: the lines it would cover are
// reported as adopted (back to the file's first line), an over-report
// after a deliberate change of key rather than lines hidden from the start
// event by a forged line. Past maxFailedChecks checks that did not end the
// count, no checkpoint ends it (mayCheck).
func (s *Sink) ownCheckpoint(ev *audit.Event) bool {
	cp := ev.Checkpoint
	if cp == nil || cp.HeadSeq+1 != ev.Seq || cp.HeadHash != ev.Prev {
		return false
	}
	if v, ok := s.o.Signer.(OwnVerifier); ok {
		// A Vault transit signer checks a checkpoint under one of its
		// key's versions with the public keys it read (Load).
		msg, err := audit.CheckpointMessage(ev)
		sig, serr := base64.StdEncoding.Strict().DecodeString(cp.Signature)
		if err != nil || serr != nil {
			return false
		}
		if s.unknownKids[cp.KeyID] {
			s.passedUnchecked(ev)
			return false
		}
		if !s.mayCheck(ev) {
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), signTimeout)
		known, good := v.VerifyOwn(ctx, cp.KeyID, msg, sig)
		cancel()
		if !known {
			if s.unknownKids == nil {
				s.unknownKids = map[string]bool{}
			}
			s.unknownKids[cp.KeyID] = true
			s.passedUnchecked(ev)
		}
		ok := known && good && cp.Alg == s.o.Signer.Alg()
		if !ok {
			s.failedChecks++
		}
		return ok
	}
	k, ok := s.o.Signer.(interface {
		KeyID() string
		PublicKey() ed25519.PublicKey
	})
	if !ok {
		return true // a signer that cannot check checkpoints (none is built in)
	}
	if cp.KeyID != k.KeyID() {
		s.passedUnchecked(ev)
		return false
	}
	msg, err := audit.CheckpointMessage(ev)
	if err != nil || cp.Alg != audit.AlgEd25519 {
		return false
	}
	sig, err := base64.StdEncoding.Strict().DecodeString(cp.Signature)
	if err != nil || !s.mayCheck(ev) {
		return false
	}
	ok = ed25519.Verify(k.PublicKey(), msg, sig)
	if !ok {
		s.failedChecks++
	}
	return ok
}

// passedUnchecked notes the checkpoint ev, by a key the sink cannot
// check, that ownCheckpoint did not let end the range (the newest only:
// eventsSinceCheckpoint reads backwards).
func (s *Sink) passedUnchecked(ev *audit.Event) {
	if s.unchecked == 0 {
		s.unchecked, s.uncheckedKey = ev.Seq, ev.Checkpoint.KeyID
	}
}

// OwnVerifier is a Signer that can check the checkpoints its key made
// (vault.TransitCheckpointSigner): known is false when kid is not its
// key's, or it cannot tell; the checkpoint then does not end the count
// (ownCheckpoint).
type OwnVerifier interface {
	VerifyOwn(ctx context.Context, kid string, msg, sig []byte) (known, ok bool)
}

// rotationTime is the timestamp the next rotated file is named with: now,
// but not before the chain's last line, and after the newest rotated
// sibling (and the last rotation of this run). Rotated files are read in
// name order (`keytrail audit verify`, trace.LogFiles) and the newest name
// is what an empty file resumes the chain from (lastRotatedLine), so names
// must grow with the chain even when the clock stepped back, within a run
// or across a restart.
func (s *Sink) rotationTime(now time.Time) time.Time {
	ts := now.UTC()
	if lt := s.st.chain.LastTime(); ts.Before(lt) {
		ts = lt
	}
	after := s.lastRotate
	if _, names, err := s.rotatedNames(); err != nil {
		s.log.Warn("audit: cannot list rotated files to name the next one", "err", err)
	} else if len(names) > 0 {
		newest := names[len(names)-1] // the suffix parsed: it has the layout's width
		if t, err := time.Parse(rotatedLayout, newest[len(newest)-len(rotatedLayout):]); err == nil && t.After(after) {
			after = t
		}
	}
	if !ts.After(after) {
		ts = after.Add(time.Nanosecond)
	}
	return ts
}

var errLastLineTooLong = fmt.Errorf("last line is longer than %d bytes", audit.MaxLineBytes)

// lastLine returns the last newline-terminated line of the first size bytes
// of r (without its newline) and end, the offset just after it. Bytes after
// end are a torn line. last is nil when there is no complete line.
func lastLine(r io.ReaderAt, size int64) (last []byte, end int64, err error) {
	const chunk = 64 << 10
	var buf []byte // r[pos:size]
	pos := size
	nl := -1 // index in buf of the last '\n'
	for {
		if nl < 0 {
			nl = bytes.LastIndexByte(buf, '\n')
		}
		if nl >= 0 {
			if start := bytes.LastIndexByte(buf[:nl], '\n'); start >= 0 || pos == 0 {
				return buf[start+1 : nl], pos + int64(nl) + 1, nil
			}
		} else if pos == 0 {
			return nil, 0, nil
		}
		if size-pos > 2*audit.MaxLineBytes+2 {
			return nil, 0, errLastLineTooLong
		}
		n := min(int64(chunk), pos)
		pos -= n
		b := make([]byte, n, int(n)+len(buf))
		if _, err := r.ReadAt(b, pos); err != nil && !errors.Is(err, io.EOF) {
			return nil, 0, err
		}
		buf = append(b, buf...)
		if nl >= 0 {
			nl += int(n)
		}
	}
}

// syncDir makes a created or renamed directory entry durable.
func syncDir(path string, log *slog.Logger) {
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		log.Warn("audit: open directory for sync", "err", err)
		return
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		log.Debug("audit: directory sync", "err", err)
	}
}

// Append seals ev into the chain (filling in v, seq, time, chain and prev)
// and returns nil once it is durable. ctx is honoured only while waiting to
// be enqueued; once the event is handed to the writer, Append reports what
// happened to it. A failed write returns an error wrapping
// broker.ErrUnavailable.
func (s *Sink) Append(ctx context.Context, ev *audit.Event) error {
	if ev == nil {
		return errors.New("auditfile: nil event")
	}
	if err := ctx.Err(); err != nil {
		return unavailable(fmt.Errorf("auditfile: event not enqueued: %w", err))
	}
	r := &request{ev: ev, done: make(chan error, 1)}
	if err := s.enqueue(ctx, r); err != nil {
		return err
	}
	return <-r.done
}

// Enqueue hands ev to the writer as Append does when that needs no wait:
// the sink is open (no Close under way) and its queue has room. The writer then calls done
// once, from its goroutine, with what Append would have returned (nil once
// the event is durable); done must not block. Enqueue reports whether ev
// was queued: when not, nothing was written or held and done is never
// called, and the caller appends as before (broker.QueuingAuditSink). So
// the caller need not start a goroutine to wait for an Append while it does
// other work.
func (s *Sink) Enqueue(ev *audit.Event, done func(error)) bool {
	if ev == nil || done == nil {
		return false
	}
	if ev.RequestID == "" {
		ev.RequestID = broker.NewID(broker.PrefixRequest)
	}
	r := &request{ev: ev, deferred: done, waits: true}
	// Not RLock: it waits while Close waits for the write lock, which it
	// does for as long as an Append holds the read lock waiting for room
	// (a disk whose writes hang). A Close under way is a sink closing:
	// false, as for a closed one.
	if !s.mu.TryRLock() {
		return false
	}
	defer s.mu.RUnlock()
	if s.closed {
		return false
	}
	select {
	case s.reqs <- r:
		return true
	default:
		return false
	}
}

// AppendBatch is Append for several events that must be durable together
// (the parts of one revocation): they are sealed in order into one batch,
// written with one write() and made durable with one fsync or journal
// write, and AppendBatch returns nil only once all of them are. When one
// cannot be sealed none is written; when the write or sync fails the file is
// truncated back to the last durable line, as for any batch, so none of them
// stays. A checkpoint the sink owes may come between them; other callers'
// events come only before or after them. The batch may then hold more than
// MaxBatch events.
func (s *Sink) AppendBatch(ctx context.Context, evs []*audit.Event) error {
	if len(evs) == 0 {
		return nil
	}
	if slices.Contains(evs, nil) {
		return errors.New("auditfile: nil event")
	}
	if err := ctx.Err(); err != nil {
		return unavailable(fmt.Errorf("auditfile: events not enqueued: %w", err))
	}
	r := &request{evs: evs, done: make(chan error, 1)}
	if err := s.enqueue(ctx, r); err != nil {
		return err
	}
	return <-r.done
}

// AppendDeferred is Append for an event nobody waits for (a proxied call's
// use_result, written after the response): it returns at once, and the
// event is sealed and made durable with the next Append's batch, or on its
// own after Options.DeferFor at the latest (or at Close). It saves an fsync
// per such event without delaying anyone. It never waits for room in the
// queue either: with the queue full (the writer stuck on a disk whose
// writes hang) the event is held, after the deferred events held before
// it, and one goroutine queues them in order once there is room. At most
// maxOverflow (16384, or 64 MaxBatch) are held: past that the event is
// refused (ErrUnavailable). Close writes the held ones too. done, when not
// nil, is called once with the outcome, from the writer goroutine (or that
// one, or the caller's): it must not block. Only AppendWithin queues behind
// the deferred events held (holdBehindDeferred); Append and AppendBatch may
// overtake them, so an event that must follow a deferred one of the same
// request goes through AppendWithin (Service.Audit: the proxy's use event
// after its shared_use_suspected). Every other deferred event is the last
// of its request, and revocation and reconciliation, which call Append and
// AppendBatch, defer none.
func (s *Sink) AppendDeferred(ev *audit.Event, done func(error)) {
	if ev == nil {
		if done != nil {
			done(errors.New("auditfile: nil event"))
		}
		return
	}
	if ev.RequestID == "" {
		ev.RequestID = broker.NewID(broker.PrefixRequest)
	}
	r := &request{ev: ev, deferred: done}
	if err := s.enqueueOrHold(r); err != nil && done != nil {
		done(err)
	}
}

var errOverflow = errors.New("auditfile: deferred event dropped: the queue and the deferred events waiting for room are full (the writer is stuck)")

// enqueueOrHold hands the deferred request r to the writer goroutine if the
// queue has room and no deferred request waits for it (which r must not
// overtake); otherwise it holds r in the overflow, starting its feeder.
func (s *Sink) enqueueOrHold(r *request) error {
	s.overflowMu.Lock()
	defer s.overflowMu.Unlock()
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return unavailable(errClosed)
	}
	if !s.feeding() {
		select {
		case s.reqs <- r:
			return nil
		default:
		}
	}
	return s.hold(r, errOverflow)
}

// hold appends r to the overflow, starting the feeder when none runs; full
// is the error when the overflow is full. Under overflowMu and mu (read).
func (s *Sink) hold(r *request, full error) error {
	if s.closed || s.closing { // Close waits for what is held: nothing more
		return unavailable(errClosed)
	}
	if s.held >= s.maxOverflow {
		return unavailable(full)
	}
	if !s.feeding() {
		// Under overflowMu, as Close sets closing before it waits
		// for feeders: it sees the Add.
		s.feeders.Add(1)
		go s.feed()
	}
	s.overflow = append(s.overflow, r)
	s.held++
	return nil
}

// feeding reports whether the feeder runs: it does while a request is held
// (in the overflow, or being queued by it). Under overflowMu.
func (s *Sink) feeding() bool { return s.held > 0 }

// feed queues the overflow's requests in order, each once there is room,
// and ends when it is empty (and the last one queued: held is 0).
func (s *Sink) feed() {
	defer s.feeders.Done()
	queued := false
	for {
		s.overflowMu.Lock()
		if queued {
			s.held--
		}
		if len(s.overflow) == 0 {
			s.overflow = nil
			s.overflowMu.Unlock()
			return
		}
		r := s.overflow[0]
		s.overflow[0] = nil
		s.overflow = s.overflow[1:]
		s.overflowMu.Unlock()
		if err := s.enqueue(context.Background(), r); err != nil {
			r.finish(err)
		}
		queued = true
	}
}

// AppendWithin is Append waiting at most d (broker.BoundedAuditSink): an
// event not durable by then, or not even queued (the writer stuck on a
// disk whose writes hang, the queue full behind it), is reported as
// ErrUnavailable wrapping broker.ErrAuditPending. Such an event stays
// queued (one not queued in time is held for the feeder, as a deferred
// event is) and may still become durable; one that cannot be held (the
// overflow full, the sink closing) is not written, and its error does not
// wrap ErrAuditPending. No context: as for an Append whose ctx never ends,
// only d bounds the wait. An event never overtakes the deferred events held
// before it was called (holdBehindDeferred).
func (s *Sink) AppendWithin(ev *audit.Event, d time.Duration) error {
	if ev == nil {
		return errors.New("auditfile: nil event")
	}
	// A timer from the pool: the wait allocates nothing Append does not.
	t, _ := s.timers.Get().(*time.Timer)
	if t == nil {
		t = time.NewTimer(d)
	} else {
		t.Reset(d)
	}
	defer func() {
		// Back to the pool only when Stop stopped it before it fired:
		// its channel is then empty with any timer implementation. Under
		// GODEBUG=asynctimerchan=1 (the timers of Go before 1.23, an
		// operator's setting) one that fired as the wait ended keeps its
		// value, which would end the next caller's wait at once, and no
		// drain after Stop is right for both implementations. One that
		// fired (a timeout: rare) is left to the collector.
		if t.Stop() {
			s.timers.Put(t)
		}
	}()
	r := &request{ev: ev, done: make(chan error, 1)}
	if held, err := s.holdBehindDeferred(r); err != nil {
		return err
	} else if !held {
		if err := s.enqueueUntil(context.Background(), r, t.C); err != nil {
			if !errors.Is(err, broker.ErrAuditPending) {
				return err
			}
			// Not queued within d: pending, as the port promises ("may
			// still land"), so it must land. It is held for the feeder
			// as a deferred event is (r.done is buffered: nobody need
			// read it); when it cannot be held it is not written, which
			// is not pending.
			if herr := s.enqueueOrHold(r); herr != nil {
				return herr
			}
			return err
		}
	}
	select {
	case err := <-r.done:
		return err
	case <-t.C:
		return unavailable(fmt.Errorf("auditfile: event not durable within %s: %w", d, broker.ErrAuditPending))
	}
}

// holdBehindDeferred holds r in the overflow, behind the deferred events
// held there, when there are any (the queue full, the writer stuck): r must
// not overtake an event deferred before it (the proxy defers a request's
// shared_use_suspected event, then waits for its use event). It reports
// whether r was held; when the overflow is full r is refused: not written,
// an ErrUnavailable error that does not wrap broker.ErrAuditPending.
func (s *Sink) holdBehindDeferred(r *request) (bool, error) {
	s.overflowMu.Lock()
	defer s.overflowMu.Unlock()
	if !s.feeding() {
		return false, nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	// Not written when full: a failure, not a pending event.
	err := s.hold(r, errHeldFull)
	if err == nil && r.ev.RequestID == "" {
		// As enqueueUntil does, the caller's event (not the feeder's,
		// which cannot take r before overflowMu is released).
		r.ev.RequestID = broker.NewID(broker.PrefixRequest)
	}
	return true, err
}

var errHeldFull = errors.New("auditfile: event not enqueued (the writer is stuck and the deferred events before it fill the overflow)")

// enqueue hands r to the writer goroutine.
func (s *Sink) enqueue(ctx context.Context, r *request) error {
	return s.enqueueUntil(ctx, r, nil)
}

// enqueueUntil is enqueue that also gives up when timeout fires (nil:
// never), with an error wrapping broker.ErrAuditPending.
func (s *Sink) enqueueUntil(ctx context.Context, r *request, timeout <-chan time.Time) error {
	// Every event carries a request_id (SPEC "Audit log"); actions not
	// caused by a request (policy loads, the revocation worker,
	// reconciliation) get one of their own.
	if r.ev != nil && r.ev.RequestID == "" {
		r.ev.RequestID = broker.NewID(broker.PrefixRequest)
	}
	for _, ev := range r.evs {
		if ev.RequestID == "" {
			ev.RequestID = broker.NewID(broker.PrefixRequest)
		}
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return unavailable(errClosed)
	}
	select {
	case s.reqs <- r:
		return nil
	case <-ctx.Done():
		return unavailable(fmt.Errorf("auditfile: event not enqueued: %w", ctx.Err()))
	case <-timeout:
		return unavailable(fmt.Errorf("auditfile: event not enqueued in time (the writer is stuck): %w", broker.ErrAuditPending))
	}
}

// Ping reports whether the sink can write: nil when the last write
// succeeded. After a failure it asks the writer to recover (reopen the file,
// drop unacknowledged bytes, sync) so readiness comes back without traffic.
func (s *Sink) Ping(ctx context.Context) error {
	s.statsMu.Lock()
	healthy := s.stats.Healthy
	s.statsMu.Unlock()
	// A sink on a (nearly) full file system would fail its next write:
	// report it before a request finds out.
	if err := s.checkFreeSpace(); err != nil {
		return unavailable(err)
	}
	if healthy {
		return nil
	}
	reply := make(chan error, 1)
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return unavailable(errClosed)
	}
	select {
	case s.probes <- reply:
		s.mu.RUnlock()
	case <-ctx.Done():
		s.mu.RUnlock()
		return unavailable(ctx.Err())
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return unavailable(ctx.Err())
	}
}

// UnsignedRange is the range of lines that followed the chain's last
// checkpoint when Open resumed it: lines an unclean stop left unsigned, or
// lines added to the file while no sink held it. Nothing in the file tells
// which, and the sink's next checkpoint signs them as if it had written
// them.
type UnsignedRange struct {
	FirstSeq uint64 // seq of the first such line (LastCheckpointSeq+1 when more lines than seqs follow it: added lines, or seqs that do not count up)
	LastSeq  uint64 // seq of the last line of the chain when Open resumed it
	Lines    int    // how many, counted back to that checkpoint however many they are
	// LastCheckpointSeq is the seq of the checkpoint before them (in the
	// newest rotated file when the file, which continues it, holds none:
	// a crash right after a rotation); 0 when none is in the file (nor
	// there), or none that Open checked (maxFailedChecks): they are
	// counted from its first line.
	LastCheckpointSeq uint64
	// TooLongLines is how many of them were longer than
	// audit.MaxLineBytes (no broker writes one: a corrupted or added
	// line): counted in Lines unread, as a line that does not parse is.
	TooLongLines int
}

// UnsignedResumed returns the range of lines no checkpoint covered when
// Open resumed the chain, which the next checkpoint signs; nil when there
// were none (a clean stop, or a new chain). The broker records it in its
// start event, so that the file itself says which lines were signed only
// after a restart.
func (s *Sink) UnsignedResumed() *UnsignedRange {
	if s.resumed == nil {
		return nil
	}
	r := *s.resumed
	return &r
}

// ResumedRecorded tells the sink that an event recording the range
// UnsignedResumed returned is durable (Options.RecordResumed): its
// checkpoints, held until then, may sign the adopted lines. The next batch
// or tick writes the checkpoints that are due.
func (s *Sink) ResumedRecorded() {
	s.holdCP.Store(false)
}

// errCheckpointHeld: a checkpoint would sign lines Open adopted before the
// caller recorded them (Options.RecordResumed).
var errCheckpointHeld = errors.New("checkpoint held until the start event records the lines the sink adopted when it opened the file")

// ChainID returns the id of the chain the sink writes: the one its file
// continued, or the one it started.
func (s *Sink) ChainID() string { return s.chainID }

// Stats returns the counters.
func (s *Sink) Stats() Stats {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	return s.stats
}

// Close writes what is queued (deferred events held for room in the queue
// included), a final checkpoint (with a Signer, when there
// were events since the last one, unless held: Options.RecordResumed),
// syncs and closes the file. A file the
// path no longer names is let go of as the ticker would (its lines copied,
// displace), and Close reports it. Appends after Close fail with
// ErrUnavailable. Close is idempotent.
func (s *Sink) Close() error {
	s.closeOnce.Do(func() {
		// The deferred events held for room in the queue are queued
		// first (nothing more is held from now on).
		s.overflowMu.Lock()
		s.closing = true
		s.overflowMu.Unlock()
		s.feeders.Wait()
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.quit)
		<-s.done
		if s.stopTick != nil {
			s.stopTick()
		}
	})
	return s.closeErr
}

func unavailable(err error) error {
	return broker.Unavailable("audit_unavailable", time.Second, err)
}

// run is the writer goroutine. Deferred requests are held until a waited-for
// request comes (they are written first, in arrival order, in its batch),
// until MaxBatch of them are held, or until DeferFor has passed.
func (s *Sink) run() {
	defer close(s.done)
	batch := make([]*request, 0, s.o.MaxBatch)
	var held []*request
	hold := time.NewTimer(time.Hour)
	hold.Stop()
	flushHeld := func() {
		hold.Stop()
		if len(held) > 0 {
			s.commitEvents(held)
			held = held[:0]
		}
	}
	for {
		select {
		case r := <-s.reqs:
			batch = s.drain(append(batch[:0], r))
			waited := slices.ContainsFunc(batch, func(r *request) bool { return r.done != nil || r.waits })
			if !waited && len(held)+len(batch) < s.o.MaxBatch {
				if len(held) == 0 {
					hold.Reset(s.o.DeferFor)
				}
				held = append(held, batch...)
				continue
			}
			if len(held)+len(batch) > s.o.MaxBatch {
				flushHeld()
			}
			if len(held) > 0 {
				hold.Stop()
				combined := make([]*request, 0, len(held)+len(batch))
				combined = append(append(combined, held...), batch...)
				held = held[:0]
				s.commitEvents(combined)
				continue
			}
			s.commitEvents(batch)
		case <-hold.C:
			flushHeld()
		case reply := <-s.probes:
			reply <- s.probe()
		case <-s.tick:
			s.onTick()
		case <-s.quit:
			flushHeld()
			for {
				batch = s.drain(batch[:0])
				if len(batch) == 0 {
					break
				}
				s.commitEvents(batch)
			}
			s.closeErr = s.finish()
			return
		}
	}
}

// drain adds queued requests to batch without waiting, up to MaxBatch.
func (s *Sink) drain(batch []*request) []*request {
	for len(batch) < s.o.MaxBatch {
		select {
		case r := <-s.reqs:
			batch = append(batch, r)
		default:
			return batch
		}
	}
	return batch
}

// commitEvents seals a batch, adds the checkpoints that are due, writes and
// syncs it, and releases its callers.
func (s *Sink) commitEvents(batch []*request) {
	now := s.o.Now()
	work := s.st.clone()
	s.buf.Reset()
	sealed := batch[:0]
	events := 0
	for _, r := range batch {
		var err error
		if r.evs != nil {
			err = s.sealAll(&work, r.evs, now)
		} else {
			err = s.seal(&work, r.ev, now)
		}
		if err != nil {
			r.finish(fmt.Errorf("auditfile: %w", err))
			continue
		}
		sealed = append(sealed, r)
		events += max(len(r.evs), 1)
	}
	if len(sealed) == 0 {
		return
	}
	if work.sinceCP > 0 && now.Sub(work.cpAt) >= s.o.CheckpointInterval {
		s.addCheckpoint(&work, now)
	}
	err := s.write(work, events)
	for _, r := range sealed {
		r.finish(err)
	}
	if err == nil {
		s.maybeRotate(now)
	}
}

// seal seals ev into work and the batch buffer, followed by a checkpoint
// when one is due.
func (s *Sink) seal(work *state, ev *audit.Event, now time.Time) error {
	// The line and its '\n' go straight into the batch buffer.
	if err := work.chain.SealTo(&s.buf, ev, now); err != nil {
		return err
	}
	work.sinceCP++
	if work.sinceCP >= s.o.CheckpointEvery {
		s.addCheckpoint(work, now)
	}
	return nil
}

// sealAll seals evs into work and the batch buffer, all or none: when one
// cannot be sealed, work and the buffer are as they were before.
func (s *Sink) sealAll(work *state, evs []*audit.Event, now time.Time) error {
	before, n := *work, s.buf.Len()
	before.chain = work.chain.Clone()
	for _, ev := range evs {
		if err := s.seal(work, ev, now); err != nil {
			*work = before
			s.buf.Truncate(n)
			return err
		}
	}
	return nil
}

// addCheckpoint seals a checkpoint of work's head into the batch buffer. A
// signing failure is logged and retried later; it does not fail the events.
func (s *Sink) addCheckpoint(work *state, now time.Time) {
	if s.o.Signer == nil || now.Before(s.cpBackoff) || s.holdCP.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), signTimeout)
	ev, err := work.chain.Checkpoint(ctx, s.o.Signer, broker.NewID(broker.PrefixRequest), now)
	cancel()
	if err == nil {
		err = work.chain.SealTo(&s.buf, ev, now)
	}
	if err != nil {
		s.cpBackoff = now.Add(min(time.Second, s.o.CheckpointInterval))
		s.statsMu.Lock()
		s.stats.CheckpointFailures++
		s.statsMu.Unlock()
		s.log.Error("audit: checkpoint failed", "err", err)
		return
	}
	work.sinceCP, work.cpAt, work.cpSeq = 0, now, ev.Seq
	work.cps++
}

// write makes the batch buffer durable. On failure it truncates the file back
// to the last durable line, keeps the durable chain state and returns
// ErrUnavailable.
func (s *Sink) write(work state, events int) error {
	if err := s.ensureOpen(); err != nil {
		return s.fail(err)
	}
	b := s.buf.Bytes()
	start := time.Now()
	journaled, err := s.journal(b)
	if err != nil {
		// Nothing reached the file; the frame, if written, is dropped by
		// the reset in rollback.
		s.rollback(nil)
		return s.fail(err)
	}
	n, err := s.f.Write(b)
	if err == nil && n != len(b) {
		err = io.ErrShortWrite
	}
	if err == nil && !s.o.NoFsync && !journaled {
		err = s.syncFile()
	} else if err != nil {
		err = fmt.Errorf("write: %w", err)
	}
	// The batch is durable in f; it is acknowledged only if f is still
	// the file readers find at the path (one stat per batch).
	var found string
	if err == nil {
		found, err = s.checkPath(s.good + int64(n))
	}
	if found != "" {
		if journaled {
			if derr := s.j.drop(len(b)); derr != nil {
				s.log.Error("audit: cannot withdraw the batch from the journal", "err", derr)
			}
		}
		if found == foundTruncated {
			return s.fail(s.truncatedUnderneath(s.dropFailedBatch(b)))
		}
		// f may still be somewhere (moved away, not replaced): the failed
		// batch leaves nothing in it, as a failed write leaves nothing
		// (rollback), so f ends with the chain's head again and can be
		// moved back to the path.
		terr := s.f.Truncate(s.good)
		if terr == nil {
			terr = s.f.Sync()
		}
		if terr != nil {
			s.log.Error("audit: cannot drop the failed batch from the file the path no longer names", "bytes", len(b), "err", terr)
		}
		if terr != nil {
			// f still ends with the failed batch: a reopen of f moved
			// back drops it (checkReopened) rather than refuse f as
			// longer than was written. displace keeps dirty.
			s.dirty = int64(len(b))
		}
		return s.fail(s.displace(found))
	}
	if err != nil {
		s.dirty = int64(len(b))
		if journaled {
			// Withdraw the frame now: the rollback's reset needs an
			// fsync of the file, which may fail too.
			if derr := s.j.drop(len(b)); derr != nil {
				s.log.Error("audit: cannot withdraw the failed batch from the journal; a crash before the next reset replays it", "err", derr)
			}
		}
		s.rollback(b)
		return s.fail(err)
	}
	if s.o.OnWrite != nil {
		s.o.OnWrite(time.Since(start))
	}
	s.good += int64(n)
	s.dirty = 0
	s.st = work
	if s.j != nil && !journaled {
		// Synced past the journal's frames: a new epoch continues here.
		if err := s.syncAndReset(); err != nil {
			s.log.Warn("audit: journal reset after a direct sync failed; retrying before the next write", "err", err)
		}
	}
	seq, _ := work.chain.Head()
	s.statsMu.Lock()
	s.stats.Events += uint64(events)
	s.stats.Checkpoints += uint64(work.cps)
	s.stats.Batches++
	s.stats.Seq = seq
	s.stats.CheckpointSeq = work.cpSeq
	s.stats.Healthy = true
	s.statsMu.Unlock()
	return nil
}

// journal makes b durable in the journal, when there is one and b fits:
// journaled reports whether it did. A full journal is emptied first (the file
// synced, a new epoch started); a batch too large for the journal is left to
// an fsync of the file.
func (s *Sink) journal(b []byte) (journaled bool, err error) {
	if s.j == nil || s.o.NoFsync {
		return false, nil
	}
	if s.j.broken || !s.j.fits(len(b)) {
		if err := s.syncAndReset(); err != nil {
			return false, err
		}
	}
	if !s.j.capacity(len(b)) {
		return false, nil
	}
	return true, s.j.append(b, s.good)
}

// rollback drops whatever a failed write left after the last durable line,
// and the journal's frames with it (a new epoch starts at the last durable
// line). If that fails too the file is closed, and ensureOpen retries on
// reopen; the journal is reset before the next write. b is the failed
// batch (nil: none). A file truncated underneath is let go of instead
// (truncatedUnderneath): cutting it "back" to good would extend it with
// zeros up to where the lines were, and hide the truncation from checkPath.
func (s *Sink) rollback(b []byte) {
	if left, cut := s.cutUnderneath(b); cut {
		_ = s.truncatedUnderneath(left)
		return
	}
	err := s.f.Truncate(s.good)
	if err == nil {
		err = s.syncAndReset()
	}
	if err != nil {
		if s.j != nil {
			s.j.broken = true
		}
		s.log.Error("audit: cannot truncate and sync after a failed write; reopening later", "err", err)
		_ = s.f.Close()
		s.f = nil
		return
	}
	s.dirty = 0
}

func (s *Sink) fail(err error) error {
	s.statsMu.Lock()
	s.stats.Failures++
	s.stats.Healthy = false
	s.statsMu.Unlock()
	s.log.Error("audit: write failed; events not recorded", "err", err)
	return unavailable(fmt.Errorf("auditfile: %w", err))
}

// ensureOpen (re)opens the file after a failure or a rotation, checking that
// it still ends with the last durable line.
func (s *Sink) ensureOpen() error {
	if s.stranded() {
		if err := s.settleStranded(); err != nil {
			return err
		}
	}
	if s.f != nil {
		return nil
	}
	// A file with lines is reopened, never created (not even when it
	// disappears between a check and the open): an empty file at the
	// path would pass for the audit log.
	f, err := s.openFile(s.o.Path, s.good == 0)
	if s.good > 0 && errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("reopen: %s is missing: moved or removed underneath", s.o.Path)
	}
	if err != nil {
		return fmt.Errorf("reopen: %w", err)
	}
	fi, err := s.checkReopened(f)
	if err != nil {
		_ = f.Close()
		return err
	}
	s.f, s.fid, s.displaced = f, fi, false
	return nil
}

// checkReopened checks that a reopened f ends with the last durable line
// (after dropping the bytes of a failed write) and returns its identity.
func (s *Sink) checkReopened(f file) (os.FileInfo, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("reopen: stat: %w", err)
	}
	// Only the file the sink wrote may be cut short by a pending rewrite
	// of the journal's frames: another one at the path (replaced while f
	// was closed) gets the full check, as a rewrite would cut it and
	// write the frames over it (nothing before an epoch starting at byte
	// 0 tells them apart). A file let go of (displaced) is not own: letGo
	// forgot its identity.
	own := s.fid != nil && os.SameFile(fi, s.fid)
	return fi, s.checkReopenedSize(f, fi.Size(), own)
}

func (s *Sink) checkReopenedSize(f file, size int64, own bool) error {
	switch {
	case s.resync && own && s.mayHave(size, s.dirty):
		// A rewrite of the journal's frames was cut short, or is still
		// to be made: syncAndReset makes it before the next write.
		s.dirty = 0
		return nil
	case size < s.good:
		return fmt.Errorf("reopen: file is %d bytes, shorter than its last durable line at %d: truncated or replaced underneath", size, s.good)
	case size > s.good+s.dirty:
		return fmt.Errorf("reopen: file is %d bytes, more than was written (%d): another writer?", size, s.good+s.dirty)
	case size > s.good:
		s.log.Warn("audit: dropping bytes of a failed write", "bytes", size-s.good)
		if err := f.Truncate(s.good); err != nil {
			return fmt.Errorf("reopen: truncate: %w", err)
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("reopen: sync: %w", err)
		}
	}
	s.dirty = 0
	if s.good == 0 {
		return nil
	}
	last, _, err := lastLine(f, s.good)
	if err != nil {
		return fmt.Errorf("reopen: %w", err)
	}
	if _, head := s.st.chain.Head(); audit.HashLine(last) != head {
		return errors.New("reopen: the file's last line is not the last durable line: replaced underneath")
	}
	return nil
}

// What checkPath finds at the path instead of the sink's file (the log's
// found=).
const (
	foundMissing   = "missing"
	foundOther     = "another file"
	foundTruncated = "truncated"
	// foundChanged: the path names a stranded f again, but f cannot be
	// taken back as it is (settleStranded, movedBack).
	foundChanged = "the sink's file again, not ending with its last acknowledged line"
)

// checkPath reports what the path names when it is no longer the sink's
// open file: foundMissing or foundOther (restored from a backup, replaced
// by a log shipper's copy, or by someone else); foundTruncated when it is,
// but shorter than want, the bytes the sink has written to it (truncated in
// place: logrotate's copytruncate); "" when it still is, or when stat fails
// otherwise (err). Lines written to f after that are in a file no reader of
// the path sees (trace.Live, the offline CLI, reconcile), or after nothing
// they link to. The size comes with the same stat.
func (s *Sink) checkPath(want int64) (found string, err error) {
	fi, err := os.Stat(s.o.Path)
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return foundMissing, nil
	case err != nil:
		return "", fmt.Errorf("stat: %w", err)
	case !os.SameFile(fi, s.fid):
		return foundOther, nil
	case fi.Size() < want:
		return foundTruncated, nil
	}
	return "", nil
}

// written is the size f has at least, unless truncated underneath: the last
// acknowledged line's end, or, while a rewrite of the journal's frames is
// pending after a failed fsync (resync), the epoch's base, where the
// rewrite cuts it.
func (s *Sink) written() int64 {
	if s.resync {
		return s.j.base
	}
	return s.good
}

// checkLost checks that the path still names f, with every acknowledged
// line in it (checkPath), and lets go of f when not (lose): lost reports
// that, and err is then lose's error for fail; otherwise err is checkPath's
// (the path could not be checked).
func (s *Sink) checkLost() (lost bool, err error) {
	found, err := s.checkPath(s.written())
	if found == "" {
		return false, err
	}
	return true, s.lose(found)
}

// mayHave reports whether f may be size bytes long and still hold every
// acknowledged line: at least written() (the bytes after it, up to good,
// then come from the pending rewrite of the journal's frames), at most
// good and extra bytes of a failed write that may linger.
func (s *Sink) mayHave(size, extra int64) bool {
	return size >= s.written() && size <= s.good+extra
}

// lose lets go of f, which the path no longer names or which was truncated
// underneath (found, from checkPath), failing the sink. The error is for
// fail.
func (s *Sink) lose(found string) error {
	if found == foundTruncated {
		return s.truncatedUnderneath(0)
	}
	return s.displace(found)
}

// truncatedUnderneath lets go of f, which the path still names but which is
// shorter than the lines the sink acknowledged in it: truncated in place
// (logrotate's copytruncate, a shell's "> file"). The truncated lines are
// gone from f, so the sink has nothing to copy them from (whoever truncated
// it may have copied them first); what is left of f stays at the path, and
// nothing is written to it. The sink fails until the path holds a file
// that ends with the chain's last line (checkReopened), such as that copy
// when it holds every acknowledged line. left is the bytes of a failed
// batch still at f's end (dropFailedBatch), not counted in the size logged.
// The error is for fail.
func (s *Sink) truncatedUnderneath(left int64) error {
	s.statsMu.Lock()
	s.stats.Healthy = false
	s.statsMu.Unlock()
	seq, _ := s.st.chain.Head()
	size := int64(-1)
	if fi, err := s.f.Stat(); err == nil {
		size = fi.Size() - left
	}
	attrs := []any{"found", foundTruncated, "size", size, "acknowledged_bytes", s.good, "seq", seq}
	if left > 0 {
		attrs = append(attrs, "failed_batch_left_at_end", left)
	}
	s.log.Error("audit: the audit file was truncated underneath the sink (logrotate's copytruncate?): the lines it had acknowledged past the file's size are gone from it and the sink cannot copy them (only a copy made before the truncation holds them); nothing more is written to the file, and appends fail until the path holds a file ending with the chain's last line (docs/RELIABILITY.md)", attrs...)
	s.letGo("truncated")
	s.dirty = 0
	return fmt.Errorf("audit file truncated underneath: %d bytes at the path, %d acknowledged; the truncated lines are not in it any more", size, s.good)
}

// letGo closes f, which the path no longer names or which was truncated
// underneath (what: "displaced", "truncated"). Until a reopen passes
// checkReopened's full check (displaced), nothing at the path is taken for
// it. The journal's epoch continued f: the next write starts a new one.
func (s *Sink) letGo(what string) {
	if err := s.f.Close(); err != nil {
		s.log.Warn("audit: close the "+what+" file", "err", err)
	}
	s.f, s.fid = nil, nil
	s.lostFound = ""
	s.displaced = true
	if s.j != nil {
		s.j.broken = true
	}
}

// cutUnderneath reports whether f, after a failed write of (a prefix of) b,
// no longer holds the acknowledged lines: shorter than written(), or, when
// at least as long, without the last acknowledged line ending at good (cut
// and then written to by the failed write). While a rewrite of the
// journal's frames is pending (resync) only the size tells. A failed
// write's bytes that are all f holds (emptied, as copytruncate does) are
// dropped (dropIfAlone); left is what stays of them at f's end when known
// (0 otherwise).
func (s *Sink) cutUnderneath(b []byte) (left int64, cut bool) {
	fi, err := s.f.Stat()
	if err != nil {
		return 0, false // cannot tell: the truncate and the next checkPath will
	}
	size := fi.Size()
	switch {
	case size < s.written():
	case s.resync || s.good == 0:
		return 0, false
	default:
		last, end, err := lastLine(s.f, s.good)
		_, head := s.st.chain.Head()
		whole := err == nil && end == s.good && audit.HashLine(last) == head
		if whole || err != nil && !errors.Is(err, errLastLineTooLong) { // a read error: cannot tell
			return 0, false
		}
	}
	_, left = s.dropIfAlone(b, size)
	return left, true
}

// dropIfAlone empties f when its size bytes are all bytes of the failed
// batch b (its start): f was emptied underneath (as copytruncate does)
// before b was written to it, and is then as it was left. It never cuts f
// to a size other than 0, which would write zeros into a file cut shorter
// meanwhile. alone reports whether f held only b's bytes; left is what
// stays of them (0: f was emptied).
func (s *Sink) dropIfAlone(b []byte, size int64) (alone bool, left int64) {
	if size == 0 || size > int64(len(b)) {
		return false, 0
	}
	have := make([]byte, size)
	if _, err := s.f.ReadAt(have, 0); err != nil || !bytes.Equal(have, b[:size]) {
		return false, 0
	}
	if err := s.f.Truncate(0); err != nil {
		return true, size
	}
	_ = s.f.Sync()
	return true, 0
}

// dropFailedBatch removes the failed batch b from f, truncated underneath
// before b was appended (at its end), when f holds nothing else
// (dropIfAlone). It returns the bytes of b left at f's end (0: none).
func (s *Sink) dropFailedBatch(b []byte) (left int64) {
	fi, err := s.f.Stat()
	n := int64(len(b))
	if err != nil || fi.Size() < n {
		return 0
	}
	if alone, left := s.dropIfAlone(b, fi.Size()); alone {
		return left
	}
	have := make([]byte, n)
	if _, err := s.f.ReadAt(have, fi.Size()-n); err != nil || !bytes.Equal(have, b) {
		return 0 // b was cut off with the rest
	}
	return n
}

// displace lets go of f, which the path no longer names (found says what it
// names), failing the sink: its durable lines are copied to a new sibling
// (keepDisplaced) and f is closed. Nothing at the path is renamed, truncated
// or removed; a reopen takes a file there only if it ends with the chain's
// head (checkReopened), as the copy put back does. When the copy cannot be
// made f stays open (stranded) and the copy is retried on the next tick,
// write or probe, unless the path names f again (settleStranded). The error
// is for fail.
func (s *Sink) displace(found string) error {
	s.statsMu.Lock()
	s.stats.Healthy = false
	s.statsMu.Unlock()
	seq, _ := s.st.chain.Head()
	name, err := s.keepDisplaced()
	if err != nil {
		if !s.stranded() {
			s.log.Error("audit: the path no longer names the sink's audit file, and its lines could not be copied next to it: they are only in the sink's open descriptor; retrying, appends fail meanwhile",
				"found", found, "bytes", s.good, "seq", seq, "err", err)
		}
		s.lostFound = found
		return fmt.Errorf("audit file displaced: the path has %s now; copying the sink's lines: %w", found, err)
	}
	if s.stranded() {
		s.log.Error("audit: copied the lines of the audit file the path no longer names", "found", found, "kept_in", name, "bytes", s.good, "seq", seq)
	} else {
		s.log.Error("audit: the path no longer names the sink's audit file; its lines are kept in a copy, and appends fail until the path holds them again (docs/RELIABILITY.md)",
			"found", found, "kept_in", name, "bytes", s.good, "seq", seq)
	}
	// dirty stays: the bytes of a failed batch f may still end with
	// (write), which a reopen of f moved back drops.
	s.letGo("displaced")
	return fmt.Errorf("audit file displaced: the path has %s now; the sink's lines are kept in %s", found, name)
}

// stranded reports whether f is stranded: the path no longer names it, and
// its lines are not copied yet (lostFound).
func (s *Sink) stranded() bool { return s.lostFound != "" }

// settleStranded retries displace for a stranded f, unless the path names
// f again (moved back by the operator): its lines are then where readers
// find them, no copy is needed, and f takes writes again. The copy failing
// for want of room, the likely reason, must not keep the sink failing once
// the file is back, even when f still ends with a failed batch (movedBack).
func (s *Sink) settleStranded() error {
	found, err := s.checkPath(s.written())
	if err == nil && found == "" && s.movedBack() {
		s.log.Warn("audit: the path names the sink's audit file again; its lines need no copy", "was", s.lostFound)
		s.lostFound = ""
		return nil
	}
	switch {
	case err == nil && found == "":
		found = foundChanged
	case found == "":
		found = s.lostFound // cannot tell: as before
	}
	return s.lose(found)
}

// movedBack reports whether f, which the path names again, can take writes:
// it ends with the last acknowledged line (endsAtGood), or after it with the
// bytes of a failed batch that could not be dropped (dirty, write), which
// are dropped as a reopen of f drops them (checkReopenedSize: f is the
// sink's own file, and must end with the chain's head at good).
func (s *Sink) movedBack() bool {
	if s.endsAtGood() {
		return true
	}
	fi, err := s.f.Stat()
	return err == nil && s.checkReopenedSize(s.f, fi.Size(), true) == nil
}

// endsAtGood reports whether f ends with the last acknowledged line (a
// failed write's bytes were dropped), or, while a rewrite of the journal's
// frames is pending (resync), is cut no shorter than written(): the
// rewrite completes it before the next write.
func (s *Sink) endsAtGood() bool {
	fi, err := s.f.Stat()
	return err == nil && s.mayHave(fi.Size(), 0)
}

// keepDisplaced copies the acknowledged lines (copyLines) to a new file
// <Path>.displaced-<UTC time>, fsynced, with f's mode, owner and group
// (keepOwner), and returns its name. The copy is written as
// <name>.partial and renamed once complete: a crash during the copy leaves
// no file under a name the log would give a complete copy.
func (s *Sink) keepDisplaced() (string, error) {
	ts := s.o.Now().UTC()
	for range 1000 {
		name := s.o.Path + displacedInfix + ts.Format(rotatedLayout)
		switch _, err := os.Lstat(name); {
		case err == nil:
			ts = ts.Add(time.Nanosecond)
			continue
		case !errors.Is(err, fs.ErrNotExist):
			return "", err
		}
		tmp := name + partialSuffix
		out, err := s.mkCopy(tmp)
		if errors.Is(err, fs.ErrExist) {
			ts = ts.Add(time.Nanosecond)
			continue
		}
		if err != nil {
			return "", err
		}
		s.keepOwner(out)
		err = s.copyLines(out)
		if err == nil {
			err = out.Sync()
		}
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			// Only this sink (it holds the lock) makes these names.
			err = os.Rename(tmp, name)
		}
		if err != nil {
			_ = os.Remove(tmp) // the sink's own partial copy
			return "", err
		}
		syncDir(name, s.log)
		return name, nil
	}
	return "", errors.New("no free name for the copy")
}

// copyLines writes the acknowledged lines (up to good) to out: f's bytes,
// or, while a rewrite of the journal's frames is pending (resync), f's
// bytes up to the epoch's base and the frames' after it, as the rewrite
// would make f (f may be cut anywhere after the base). When the journal
// cannot give them, f's bytes do if f is whole.
func (s *Sink) copyLines(out io.Writer) error {
	end, tail := s.good, []byte(nil)
	if s.resync {
		base, b, err := s.epochLines()
		if err == nil {
			end, tail = base, b
		} else if fi, serr := s.f.Stat(); serr != nil || fi.Size() < s.good {
			return err
		}
	}
	n, err := io.Copy(out, io.NewSectionReader(s.f, 0, end))
	if err == nil && n != end {
		err = fmt.Errorf("copied %d of %d bytes", n, end)
	}
	if err == nil {
		_, err = out.Write(tail)
	}
	return err
}

// keepOwner gives the copy f's permissions, owner and group, as far as the
// sink may: it is what an operator moves back to the path, and a log
// shipper's access to the audit file must survive that.
func (s *Sink) keepOwner(out *os.File) {
	fi, err := s.f.Stat()
	if err != nil {
		s.log.Warn("audit: the copy of the displaced file keeps mode 0600", "err", err)
		return
	}
	if err := out.Chmod(fi.Mode().Perm()); err != nil {
		s.log.Warn("audit: cannot give the copy of the displaced file its mode", "mode", fi.Mode().Perm(), "err", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return
	}
	if err := out.Chown(int(st.Uid), int(st.Gid)); err != nil {
		if err := out.Chown(-1, int(st.Gid)); err != nil {
			s.log.Warn("audit: cannot give the copy of the displaced file its group", "gid", st.Gid, "err", err)
		}
	}
}

func createNew(name string) (*os.File, error) {
	return os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
}

// probe is Ping's recovery attempt after a failure.
func (s *Sink) probe() error {
	s.statsMu.Lock()
	healthy := s.stats.Healthy
	s.statsMu.Unlock()
	if healthy {
		return nil
	}
	if err := s.ensureOpen(); err != nil {
		return s.fail(err)
	}
	// f may have stayed open since the failure (a failed write rolled
	// back): the path may no longer name it, as the tick checks.
	if _, err := s.checkLost(); err != nil {
		return s.fail(err)
	}
	if err := s.syncAndReset(); err != nil {
		s.rollback(nil)
		return s.fail(err)
	}
	s.statsMu.Lock()
	s.stats.Healthy = true
	s.statsMu.Unlock()
	s.log.Info("audit: sink recovered")
	return nil
}

// onTick writes a checkpoint, when there were events since the last one and
// the interval would be over before the next tick, even when no event comes:
// waiting for the tick after the interval is over would leave up to
// CheckpointInterval plus a tick between checkpoints.
func (s *Sink) onTick() {
	if s.stranded() {
		_ = s.settleStranded() // retry the copy
		return
	}
	if s.f != nil {
		lost, err := s.checkLost()
		if lost {
			return
		}
		if err != nil {
			s.log.Warn("audit: cannot tell whether the path still names the audit file; the next batch fails unless it can", "err", err)
		}
	}
	if s.f == nil && s.displaced && s.ensureOpen() != nil {
		// Let go of (displaced, truncated underneath) and not back yet:
		// no checkpoint can be written until the operator puts the lines
		// back at the path, and trying one per tick would count and log
		// a failure each time (the one ERROR was logged when it was let
		// go of). The quiet reopen above takes the file once it is back.
		return
	}
	now := s.o.Now()
	if s.o.Signer == nil || s.st.sinceCP == 0 || s.holdCP.Load() || now.Add(s.tickEvery).Sub(s.st.cpAt) < s.o.CheckpointInterval {
		s.maybeRotate(now) // by age, even when idle
		return
	}
	if err := s.commitCheckpoint(now); err == nil {
		s.maybeRotate(now)
	}
}

// commitCheckpoint writes a checkpoint alone.
func (s *Sink) commitCheckpoint(now time.Time) error {
	if s.holdCP.Load() {
		return errCheckpointHeld
	}
	work := s.st.clone()
	s.buf.Reset()
	s.addCheckpoint(&work, now)
	if s.buf.Len() == 0 {
		return errors.New("checkpoint not signed")
	}
	return s.write(work, 0)
}

// maybeRotate renames a full file away and starts a new one; the chain goes
// on. With a Signer the old file ends with a checkpoint.
func (s *Sink) maybeRotate(now time.Time) {
	bySize := s.o.RotateBytes > 0 && s.good >= s.o.RotateBytes
	byAge := s.o.RotateEvery > 0 && s.good > 0 && now.Sub(s.fileStart) >= s.o.RotateEvery
	if (!bySize && !byAge) || s.f == nil {
		return
	}
	if s.o.Signer != nil && s.st.sinceCP > 0 && s.holdCP.Load() {
		// The old file must end with a checkpoint, which must wait for
		// the start event (Options.RecordResumed): so does the rotation.
		return
	}
	if s.o.Signer != nil && s.st.sinceCP > 0 {
		if err := s.commitCheckpoint(now); err != nil {
			s.log.Warn("audit: rotation postponed: no final checkpoint", "err", err)
			return
		}
	}
	if err := s.syncAndReset(); err != nil {
		s.log.Warn("audit: rotation postponed", "err", err)
		return
	}
	ts := s.rotationTime(now)
	var name string
	for {
		name = s.o.Path + "." + ts.Format(rotatedLayout)
		if _, err := os.Lstat(name); errors.Is(err, os.ErrNotExist) {
			break
		}
		ts = ts.Add(time.Nanosecond)
	}
	// Rename only the sink's own file, checked as late as can be (what is
	// left is the close and the rename themselves).
	switch found, err := s.checkPath(s.good); {
	case found != "":
		_ = s.lose(found)
		return
	case err != nil:
		s.log.Warn("audit: rotation postponed", "err", err)
		return
	}
	if err := s.f.Close(); err != nil {
		s.log.Warn("audit: close before rotation", "err", err)
	}
	s.f, s.fid = nil, nil
	if err := os.Rename(s.o.Path, name); err != nil {
		s.log.Error("audit: rotate", "err", err)
		return // the next write reopens the same file
	}
	s.lastRotate = ts
	s.fileStart = now
	s.good, s.dirty = 0, 0
	if s.j != nil {
		// The journal's epoch continued the renamed file; the next one
		// starts at the new file's first byte.
		_, head := s.st.chain.Head()
		if err := s.j.reset(0, head); err != nil {
			s.log.Warn("audit: journal reset after rotation failed; retrying before the next write", "err", err)
		}
	}
	syncDir(s.o.Path, s.log)
	s.statsMu.Lock()
	s.stats.Rotations++
	s.statsMu.Unlock()
	s.log.Info("audit: rotated", "to", name)
	if err := s.ensureOpen(); err != nil {
		s.log.Error("audit: open after rotation; retrying on the next write", "err", err)
	} else {
		syncDir(s.o.Path, s.log)
	}
}

// finish is Close's work in the writer: final checkpoint, sync, close.
func (s *Sink) finish() error {
	var errs []error
	if s.f != nil && !s.stranded() {
		// The path is checked after every batch and on every tick: an
		// idle sink closing between two ticks must not close the only
		// descriptor of a file the path no longer names (replaced,
		// removed) without a copy of its lines, nor sync a truncated one.
		if lost, err := s.checkLost(); lost {
			errs = append(errs, err)
		}
	}
	if s.stranded() {
		// The retry may make the copy (displace lets go of f then) or
		// find the path naming f again; only a file still stranded is
		// closed here, without a copy.
		if err := s.settleStranded(); err != nil {
			errs = append(errs, err)
			if s.stranded() {
				s.log.Error("audit: closing a file the path no longer names, without a copy of its lines", "err", err)
				_ = s.f.Close()
				s.f, s.fid, s.lostFound = nil, nil, ""
				s.displaced = true
			}
		}
	}
	switch {
	case s.o.Signer != nil && s.st.sinceCP > 0 && s.holdCP.Load():
		// Closed before the caller recorded the lines Open adopted (a
		// start-up that failed): a final checkpoint would sign them with
		// no event saying so. Left unsigned, the next Open adopts them
		// again, with the lines written since.
		r := s.resumed
		seq, _ := s.st.chain.Head()
		s.log.Warn("audit: closing without a final checkpoint: no start event recorded the lines no checkpoint covered when the sink opened the file; the next start records them",
			"chain", s.chainID, "first_unsigned_seq", r.FirstSeq, "last_unsigned_seq", seq)
	case s.o.Signer != nil && s.st.sinceCP > 0:
		if err := s.commitCheckpoint(s.o.Now()); err != nil {
			errs = append(errs, fmt.Errorf("final checkpoint: %w", err))
		}
	}
	if s.f != nil {
		if err := s.syncAndReset(); err != nil {
			errs = append(errs, fmt.Errorf("sync: %w", err))
		}
		if err := s.f.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close: %w", err))
		}
		s.f = nil
	}
	if s.j != nil {
		if err := s.j.f.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close journal: %w", err))
		}
		s.j = nil
	}
	s.unlock()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("auditfile: close: %w", err)
	}
	return nil
}

// LockPath is the file a sink locks while it writes the audit file at path:
// ".<name>.lock" in the same directory (hidden, like the journal). It stays
// after Close; only the lock on it matters.
func LockPath(path string) string {
	dir, base := filepath.Split(path)
	return filepath.Join(dir, "."+base+".lock")
}

// Locked reports whether a sink holds the audit file at path (the flock on
// its LockPath), for `keytrail audit verify`: the file is then being
// written. It tries a shared lock without waiting and drops it at once, so
// a running sink is not disturbed, and one starting meanwhile waits for it
// (lockFile). False when there is no lock file or no flock.
func Locked(path string) bool {
	lf, err := os.Open(LockPath(path))
	if err != nil {
		return false
	}
	defer lf.Close()
	return errors.Is(syscall.Flock(int(lf.Fd()), syscall.LOCK_SH|syscall.LOCK_NB), syscall.EWOULDBLOCK)
}

// lockFile takes an exclusive flock on LockPath(path), so that a second
// sink (another broker pointed at the same file, on the same host or volume)
// cannot interleave its lines, and its own chain, with this one's, nor
// replay or reset the same journal. The kernel drops the lock when the
// process dies, so a crash leaves nothing to clean up. Where the file
// system has no flock the sink goes on without one, with a warning.
func lockFile(path string, log *slog.Logger) (*os.File, error) {
	lp := LockPath(path)
	f, err := os.OpenFile(lp, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("auditfile: lock: %w", err)
	}
	// `keytrail audit verify` holds a shared lock for a moment (CheckJournal):
	// retry for a while before calling the file taken. Another sink holds
	// it for as long as it runs.
	for deadline := time.Now().Add(lockWait); ; {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	switch {
	case err == nil:
		return f, nil
	case errors.Is(err, syscall.EWOULDBLOCK):
		_ = f.Close()
		return nil, fmt.Errorf("auditfile: %s is in use by another sink (%s is locked, by another keytrail process or another Open): give each broker its own audit file", path, lp)
	case errors.Is(err, syscall.ENOLCK), errors.Is(err, syscall.ENOTSUP), errors.Is(err, syscall.EOPNOTSUPP):
		_ = f.Close()
		log.Warn("audit: the file system does not support file locks; nothing stops a second broker from writing the same audit file", "lock", lp, "err", err)
		return nil, nil
	default:
		_ = f.Close()
		return nil, fmt.Errorf("auditfile: lock %s: %w", lp, err)
	}
}

// lockWait is how long Open waits for the audit file's lock.
const lockWait = time.Second

// unlock releases the lock (closing its descriptor drops the flock).
func (s *Sink) unlock() {
	if s.lock != nil {
		_ = s.lock.Close()
		s.lock = nil
	}
}

// MinFreeBytes is the free space below which Ping reports the sink
// unavailable (readiness), before writes start failing.
const MinFreeBytes = 16 << 10

// checkFreeSpace fails when the audit file's file system has less than
// MinFreeBytes available to the broker.
func (s *Sink) checkFreeSpace() error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(filepath.Dir(s.o.Path), &st); err != nil {
		return nil // cannot tell; writes will say
	}
	if free := uint64(st.Bavail) * uint64(st.Bsize); free < MinFreeBytes {
		return fmt.Errorf("audit file system nearly full: %d bytes free", free)
	}
	return nil
}
