package auditfile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"
	"unsafe"

	"github.com/keytrail/keytrail/broker/audit"
)

// The journal makes a batch durable with one direct write instead of an
// append and an fsync of the audit file.
//
// It is a preallocated file next to the audit log (.<name>.wal: hidden, so
// that a glob of the audit files, audit.jsonl*, does not take it). Each batch is
// written into it as a frame with O_DIRECT|O_DSYNC, into blocks that already
// hold data: the file system has no size or allocation to journal, so the
// write costs one device write and none of the file system's journal commit
// (on the ext4 disks measured, ~130 µs instead of ~200 µs idle, and a third
// of the CPU; docs/PERFORMANCE.md). The same bytes are then appended to the
// audit file without an fsync, so the audit file stays plain JSON Lines for
// tail -f and log shippers.
//
// A journal epoch starts (reset) when the audit file has been fsynced up to
// base: its frames hold the batches appended after base, in order. When the
// journal is full the audit file is fsynced and a new epoch begins. Open
// replays the frames of the current epoch into the audit file before reading
// it, so every batch acknowledged before a crash is in the file again; a
// frame torn by the crash fails its checksum and, never acknowledged, is
// dropped.
//
// Layout (all integers little endian):
//
//	block 0, the header:  "KTAUDWAL" | version u32 | crc32c u32 of [16:4096)
//	                      | epoch u64 | base i64 | head length u16 | head
//	each frame, from 4096, on a block boundary:
//	                      "KTFR" | crc32c u32 of [8:32+length) | epoch u64
//	                      | file offset i64 | length u32 | 0 u32 | the batch
//	                      | zeros to the next block
const (
	journalBlock   = 4096
	journalVersion = 1
	frameHeaderLen = 32
	maxJournalHead = 512
	journalMagic   = "KTAUDWAL"
	frameMagic     = "KTFR"
	// MinJournalBytes is the smallest journal: a header and three frames.
	MinJournalBytes = 4 * journalBlock
	// MaxJournalBytes is the largest journal: Open and CheckJournal read the
	// whole journal into memory.
	MaxJournalBytes = 1 << 30
	// DefaultJournalBytes is the journal's size: a batch takes at least one
	// 4 KiB block, so this holds 4096 batches between two fsyncs of the
	// audit file.
	DefaultJournalBytes = 16 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// JournalPath is where the sink for the audit file at path keeps its
// journal: ".<name>.wal" in the same directory.
func JournalPath(path string) string {
	dir, base := filepath.Split(path)
	return filepath.Join(dir, "."+base+".wal")
}

// ErrNoDirectIO: the file system (or the OS) refuses direct I/O, when the
// journal is opened or first written; the sink fsyncs the audit file
// instead, and ProbeJournal has nothing to time.
var ErrNoDirectIO = errors.New("direct I/O not supported")

// errPreallocate: the journal could not be preallocated (a volume too small
// for it); the sink fsyncs the audit file instead.
var errPreallocate = errors.New("cannot preallocate the journal")

// journalFile is the journal's descriptor: opened for direct, synchronous
// writes (a seam for tests).
type journalFile interface {
	io.WriterAt
	Close() error
}

type journal struct {
	f     journalFile
	size  int64
	epoch uint64
	base  int64 // audit file offset the epoch started at
	next  int64 // journal offset of the next frame
	at    int64 // audit file offset the next frame must start at
	// broken: a reset failed, so the frames on disk may not be the ones
	// the sink believes; the next write must reset first.
	broken bool
	buf    []byte // block-aligned scratch for direct writes
}

// alignedBlocks returns a zeroed slice of n bytes (a multiple of
// journalBlock) whose start is block aligned, as O_DIRECT requires.
func (j *journal) alignedBlocks(n int) []byte {
	if cap(j.buf) < n {
		raw := make([]byte, n+journalBlock)
		off := int(uintptr(unsafe.Pointer(&raw[0])) & (journalBlock - 1))
		if off != 0 {
			off = journalBlock - off
		}
		j.buf = raw[off : off+n : off+n]
	}
	b := j.buf[:n]
	clear(b)
	return b
}

// prepareJournal creates the journal file, or resizes one of another size,
// filled with zeros and synced, so that later writes overwrite allocated
// blocks; fresh rewrites it even when its size is right. Run only after
// replay: it destroys the frames.
func prepareJournal(path string, size int64, fresh bool) error {
	if fi, err := os.Stat(path); err == nil && !fresh && fi.Mode().IsRegular() && fi.Size() == size {
		return nil
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	zeros := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(zeros)) {
		if _, err := f.Write(zeros[:min(int64(len(zeros)), size-off)]); err != nil {
			_ = f.Close()
			return err
		}
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// openJournal opens the journal at path for direct writes, preallocates it
// (size bytes; fresh: rewritten even when its size is right) and starts the
// epoch after epoch at base, whose line hashes to head: the audit file must
// be durable up to base. Whether the file system takes direct I/O is asked
// before the preallocation, which a small volume cannot hold. A refusal
// wraps ErrNoDirectIO, a failed preallocation errPreallocate.
func openJournal(open func(string) (journalFile, error), path string, size int64, fresh bool, epoch uint64, base int64, head string) (*journal, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	_ = f.Close()
	jf, err := open(path)
	if err != nil {
		return nil, err
	}
	if err := prepareJournal(path, size, fresh); err != nil {
		_ = jf.Close()
		return nil, fmt.Errorf("%w: %w", errPreallocate, err)
	}
	j := &journal{f: jf, size: size, epoch: epoch}
	if err := j.reset(base, head); err != nil {
		_ = jf.Close()
		if errors.Is(err, syscall.EINVAL) {
			return nil, fmt.Errorf("%w: %w", ErrNoDirectIO, err)
		}
		return nil, err
	}
	return j, nil
}

// reset starts a new epoch: the audit file is durable up to base, whose last
// line hashes to head. On failure the journal is broken until a reset
// succeeds.
func (j *journal) reset(base int64, head string) error {
	if len(head) > maxJournalHead {
		return fmt.Errorf("journal: chain head of %d bytes", len(head))
	}
	b := j.alignedBlocks(journalBlock)
	copy(b, journalMagic)
	binary.LittleEndian.PutUint32(b[8:], journalVersion)
	binary.LittleEndian.PutUint64(b[16:], j.epoch+1)
	binary.LittleEndian.PutUint64(b[24:], uint64(base))
	binary.LittleEndian.PutUint16(b[32:], uint16(len(head)))
	copy(b[34:], head)
	binary.LittleEndian.PutUint32(b[12:], crc32.Checksum(b[16:], castagnoli))
	if _, err := j.f.WriteAt(b, 0); err != nil {
		j.broken = true
		return fmt.Errorf("journal reset: %w", err)
	}
	j.epoch++
	j.base, j.next, j.at, j.broken = base, journalBlock, base, false
	return nil
}

// frameLen is the journal space a batch of n bytes takes.
func frameLen(n int) int64 {
	return (int64(frameHeaderLen+n) + journalBlock - 1) &^ (journalBlock - 1)
}

// fits reports whether a batch of n bytes fits in the rest of the journal.
func (j *journal) fits(n int) bool { return j.next+frameLen(n) <= j.size }

// capacity reports whether a batch of n bytes fits in an empty journal.
func (j *journal) capacity(n int) bool { return journalBlock+frameLen(n) <= j.size }

// append makes batch durable as the frame for the audit file's bytes at at.
// The caller checked fits.
func (j *journal) append(batch []byte, at int64) error {
	if j.broken || at != j.at {
		return fmt.Errorf("journal: out of step (frame for offset %d, expected %d)", at, j.at)
	}
	b := j.alignedBlocks(int(frameLen(len(batch))))
	copy(b, frameMagic)
	binary.LittleEndian.PutUint64(b[8:], j.epoch)
	binary.LittleEndian.PutUint64(b[16:], uint64(at))
	binary.LittleEndian.PutUint32(b[24:], uint32(len(batch)))
	copy(b[frameHeaderLen:], batch)
	binary.LittleEndian.PutUint32(b[4:], crc32.Checksum(b[8:frameHeaderLen+len(batch)], castagnoli))
	if _, err := j.f.WriteAt(b, j.next); err != nil {
		return fmt.Errorf("journal write: %w", err)
	}
	j.next += int64(len(b))
	j.at += int64(len(batch))
	return nil
}

// drop withdraws the last frame, of n batch bytes, whose batch did not reach
// the audit file: its first block is zeroed, so a replay stops before it.
// It needs no fsync of the audit file, which may be what failed.
func (j *journal) drop(n int) error {
	fl := frameLen(n)
	if _, err := j.f.WriteAt(j.alignedBlocks(journalBlock), j.next-fl); err != nil {
		j.broken = true
		return fmt.Errorf("journal drop: %w", err)
	}
	j.next -= fl
	j.at -= int64(n)
	return nil
}

// frame is one batch read back from the journal.
type frame struct {
	at    int64
	batch []byte
}

// journalState is what a journal holds: its epoch, where it continues the
// audit file, and the frames of the epoch in order.
type journalState struct {
	epoch  uint64
	base   int64
	head   string
	frames []frame
}

// errJournalHeader marks a journal header that cannot be read: torn by a
// crash during a reset, which only starts once the audit file is durable,
// so there is nothing to replay.
var errJournalHeader = errors.New("journal header unreadable")

// readJournal returns the epoch, base, head and frames of the journal's
// current epoch, in order. A frame that is torn (bad checksum), of another epoch or
// missing ends the list; a frame that does not continue the previous one is
// an error.
func readJournal(b []byte) (j journalState, err error) {
	if len(b) == 0 {
		return j, nil // created, never prepared: no epoch, no frames
	}
	if len(b) < journalBlock {
		return j, fmt.Errorf("journal of %d bytes, shorter than its header: %w", len(b), errJournalHeader)
	}
	h := b[:journalBlock]
	if !bytes.Equal(h[:8], []byte(journalMagic)) {
		if bytes.Count(h, []byte{0}) == len(h) {
			return j, nil // never reset: no epoch, no frames
		}
		return j, fmt.Errorf("not a keytrail audit journal: %w", errJournalHeader)
	}
	if v := binary.LittleEndian.Uint32(h[8:]); v != journalVersion {
		return j, fmt.Errorf("journal version %d, want %d", v, journalVersion)
	}
	if crc32.Checksum(h[16:], castagnoli) != binary.LittleEndian.Uint32(h[12:]) {
		return j, fmt.Errorf("checksum mismatch: %w", errJournalHeader)
	}
	epoch := binary.LittleEndian.Uint64(h[16:])
	base := int64(binary.LittleEndian.Uint64(h[24:]))
	hl := int(binary.LittleEndian.Uint16(h[32:]))
	if hl > maxJournalHead || base < 0 {
		return j, fmt.Errorf("malformed: %w", errJournalHeader)
	}
	j = journalState{epoch: epoch, base: base, head: string(h[34 : 34+hl])}
	var frames []frame
	at := base
	for off := int64(journalBlock); off+frameHeaderLen <= int64(len(b)); {
		fh := b[off : off+frameHeaderLen]
		if !bytes.Equal(fh[:4], []byte(frameMagic)) || binary.LittleEndian.Uint64(fh[8:]) != epoch {
			break
		}
		n := int64(binary.LittleEndian.Uint32(fh[24:]))
		if off+frameHeaderLen+n > int64(len(b)) {
			break
		}
		if crc32.Checksum(b[off+8:off+frameHeaderLen+n], castagnoli) != binary.LittleEndian.Uint32(fh[4:]) {
			break // torn by a crash: never acknowledged
		}
		fat := int64(binary.LittleEndian.Uint64(fh[16:]))
		if fat != at {
			return journalState{}, fmt.Errorf("journal frame at %d is for audit file offset %d, want %d", off, fat, at)
		}
		frames = append(frames, frame{at: fat, batch: b[off+frameHeaderLen : off+frameHeaderLen+n]})
		at += n
		off += frameLen(int(n))
	}
	j.frames = frames
	return j, nil
}

// replayFile is what a replay needs of the audit file (a seam for tests).
type replayFile interface {
	io.ReaderAt
	io.WriterAt
	Truncate(size int64) error
	Sync() error
	Stat() (os.FileInfo, error)
	Close() error
}

func openReplayFile(path string) (replayFile, error) {
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
}

// replayJournal writes the frames of the journal at jpath into the audit
// file at path and cuts the file after the last of them, then syncs it. It
// returns the journal's epoch, the number of frames replayed and of bytes
// that were missing or different. Every frame is written, also where the
// file seems to hold it already: what the file shows may be pages an fsync
// failed to write before the stop, which the kernel keeps in memory, marked
// clean, and never writes again. Without frames the file is left alone. A
// journal whose header is unreadable is reported with errJournalHeader.
func replayJournal(jpath, path string, open func(string) (replayFile, error)) (epoch uint64, frames int, repaired int64, err error) {
	jb, err := os.ReadFile(jpath)
	if errors.Is(err, os.ErrNotExist) {
		return 0, 0, 0, nil
	}
	if err != nil {
		return 0, 0, 0, fmt.Errorf("read journal: %w", err)
	}
	js, err := readJournal(jb)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("journal %s: %w", jpath, err)
	}
	if len(js.frames) == 0 {
		return js.epoch, 0, 0, nil
	}
	f, err := open(path)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("open for replay: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, 0, fmt.Errorf("stat for replay: %w", err)
	}
	if err := js.continues(f, fi.Size(), jpath, path); err != nil {
		return 0, 0, 0, fmt.Errorf("replay: %w", err)
	}
	if err := js.writtenFor(f, fi.Size(), jpath, path); err != nil {
		return 0, 0, 0, fmt.Errorf("replay: %w", err)
	}
	for _, fr := range js.frames {
		repaired += fr.missing(f)
		if _, err := f.WriteAt(fr.batch, fr.at); err != nil {
			return 0, 0, 0, fmt.Errorf("replay write: %w", err)
		}
	}
	last := js.frames[len(js.frames)-1]
	end := last.at + int64(len(last.batch))
	if fi, err := f.Stat(); err == nil && fi.Size() > end {
		repaired += fi.Size() - end
	}
	if err := f.Truncate(end); err != nil {
		return 0, 0, 0, fmt.Errorf("replay truncate: %w", err)
	}
	if err := f.Sync(); err != nil {
		return 0, 0, 0, fmt.Errorf("replay sync: %w", err)
	}
	return js.epoch, len(js.frames), repaired, nil
}

// continues checks that the journal's epoch continues the audit file f of
// size bytes: the file is at least as long as the base the epoch started at,
// and its line ending there is the one the journal recorded.
func (js journalState) continues(f io.ReaderAt, size int64, jpath, path string) error {
	if size < js.base {
		return fmt.Errorf("journal %s continues %s at byte %d, but the file has %d bytes: it was truncated or replaced; move the journal away to start without it", jpath, path, js.base, size)
	}
	if js.base > 0 {
		last, end, err := lastLine(f, js.base)
		if err != nil {
			return err
		}
		if end != js.base || audit.HashLine(last) != js.head {
			return fmt.Errorf("journal %s does not continue %s (its line ending at byte %d is not the one the journal follows): the file was replaced; move the journal away to start without it", jpath, path, js.base)
		}
	}
	return nil
}

// writtenFor checks that the audit file f of size bytes is the one the
// epoch's frames were written for, where continues cannot tell (an epoch
// starting at byte 0 has no line before it to check): each byte the file
// holds where a frame goes is the frame's, or a zero. A crash leaves the
// sink's own file there with what the sink wrote (every byte at an offset
// in the epoch is the frame's, written before the same bytes went to the
// file), cut short, or with zeros where blocks never reached the disk; the
// bytes past the last frame are a failed batch's, dropped by the replay as
// before. An audit file holds JSON Lines, never a NUL, so a byte that is
// neither is another file's: restored or replaced underneath while the
// sink's lines went to a displaced copy, or edited. Writing the frames over
// it would destroy it. A copy of the sink's own file cut short (a backup of
// it) passes, and the replay completes it into the sink's file, losing
// none of its bytes. The check reads what the replay reads anyway.
func (js journalState) writtenFor(f io.ReaderAt, size int64, jpath, path string) error {
	for _, fr := range js.frames {
		if fr.at >= size {
			return nil
		}
		have := make([]byte, min(int64(len(fr.batch)), size-fr.at))
		n, err := f.ReadAt(have, fr.at)
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read %s: %w", path, err)
		}
		for i, c := range have[:n] {
			if c != 0 && c != fr.batch[i] {
				back := "put the sink's own file back at the path (the newest " + filepath.Base(path) + displacedInfix + "* copy the sink logged as kept_in, or the file that was moved away) and start again: the journal's lines are replayed into it"
				if js.base == 0 {
					back += "; with no file at the path they are written to a new one"
				}
				return fmt.Errorf("journal %s was not written for the file now at %s (its byte %d differs from the journal's line there): the file was replaced, restored or edited underneath, and nothing was written to it; move it aside (keep it: it may be evidence), then %s; or, if the sink's lines are kept elsewhere, move the journal away to start without it", jpath, path, fr.at+int64(i), back)
			}
		}
	}
	return nil
}

// missing returns how many of the frame's bytes the file lacks or holds
// differently (from the first difference on).
func (fr frame) missing(f io.ReaderAt) int64 {
	have := make([]byte, len(fr.batch))
	n, _ := f.ReadAt(have, fr.at)
	if n == len(have) && bytes.Equal(have, fr.batch) {
		return 0
	}
	return int64(len(fr.batch) - commonPrefix(have[:n], fr.batch))
}

// Unreplayed is what the journal next to an audit file holds that the file
// lacks: batches acknowledged by a broker that stopped uncleanly, which it
// writes back into the file at its next start (before that, the file alone
// is missing them).
type Unreplayed struct {
	Journal string
	// Batches is the number of journal frames whose bytes the file lacks
	// (or holds differently), Bytes those bytes, and Line the file's line
	// (1-based) where the first of them belongs.
	Batches int
	Bytes   int64
	Line    int
	// Live: a sink holds the file's lock, so its journal is in use (a
	// frame may be a moment ahead of the file) and was not compared.
	Live bool
}

// CheckJournal compares the audit file at path with its journal, without
// changing either: for `keytrail audit verify`, which would otherwise pass a
// file that a crash left short of acknowledged events. No journal: a zero
// Unreplayed. A journal that does not continue the file is an error.
func CheckJournal(path string) (Unreplayed, error) {
	jpath := JournalPath(path)
	u := Unreplayed{Journal: jpath}
	jb, err := os.ReadFile(jpath)
	if errors.Is(err, os.ErrNotExist) {
		return u, nil
	}
	if err != nil {
		return u, fmt.Errorf("read journal: %w", err)
	}
	if Locked(path) {
		u.Live = true
		return u, nil
	}
	js, err := readJournal(jb)
	if err != nil {
		return u, fmt.Errorf("journal %s: %w", jpath, err)
	}
	if len(js.frames) == 0 {
		return u, nil
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		f, err = os.Open(os.DevNull) // every frame is missing
	}
	if err != nil {
		return u, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return u, err
	}
	if err := js.continues(f, fi.Size(), jpath, path); err != nil {
		return u, err
	}
	if err := js.writtenFor(f, fi.Size(), jpath, path); err != nil {
		return u, err
	}
	first := int64(-1)
	for _, fr := range js.frames {
		if m := fr.missing(f); m > 0 {
			u.Batches++
			u.Bytes += m
			if first < 0 {
				first = fr.at + int64(len(fr.batch)) - m
			}
		}
	}
	if first >= 0 {
		lines, err := countLines(f, first)
		if err != nil {
			return u, err
		}
		u.Line = lines + 1
	}
	return u, nil
}

// countLines counts the newlines in r's first n bytes.
func countLines(r io.ReaderAt, n int64) (int, error) {
	buf := make([]byte, 256<<10)
	lines := 0
	for off := int64(0); off < n; {
		k, err := r.ReadAt(buf[:min(int64(len(buf)), n-off)], off)
		lines += bytes.Count(buf[:k], []byte{'\n'})
		off += int64(k)
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return 0, err
		}
	}
	return lines, nil
}

func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// ProbeJournal times n durable writes of rec through a scratch journal in
// dir, made as the sink makes a batch durable with Options.Journal (the
// journal is removed afterwards). For `keytrail bench`'s machine line: the
// latency of each write, and the process's CPU time (user+system) over the
// writes alone, not the journal's preallocation.
func ProbeJournal(dir string, rec []byte, n int) (lat []time.Duration, cpu time.Duration, err error) {
	f, err := os.CreateTemp(dir, "journal-probe-")
	if err != nil {
		return nil, 0, err
	}
	path := f.Name()
	_ = f.Close()
	defer os.Remove(path)
	size := min(frameLen(len(rec))*int64(n)+journalBlock, DefaultJournalBytes)
	size = max(size, MinJournalBytes)
	j, err := openJournal(openDirect, path, size, true, 0, 0, "")
	if err != nil {
		return nil, 0, err
	}
	defer j.f.Close()
	lat = make([]time.Duration, 0, n)
	var at int64
	cpu0 := processCPU()
	for range n {
		if !j.fits(len(rec)) {
			if err := j.reset(at, ""); err != nil {
				return nil, 0, err
			}
		}
		t := time.Now()
		if err := j.append(rec, at); err != nil {
			return nil, 0, err
		}
		lat = append(lat, time.Since(t))
		at += int64(len(rec))
	}
	return lat, processCPU() - cpu0, nil
}

// processCPU is the process's user+system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
