package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// TimeFormat is the layout of the "time" field: RFC 3339 in UTC with exactly
// nine fractional digits, so every timestamp has the same width and sorts as
// text.
const TimeFormat = "2006-01-02T15:04:05.000000000Z07:00"

// MaxChainIDLen bounds the length of a chain id.
const MaxChainIDLen = 128

// ValidChainID reports whether id can name a chain: 1 to MaxChainIDLen
// printable ASCII characters without spaces. The restriction keeps
// CheckpointSigningInput unambiguous.
func ValidChainID(id string) error {
	if id == "" {
		return errors.New("chain id is empty")
	}
	if len(id) > MaxChainIDLen {
		return fmt.Errorf("chain id is longer than %d bytes", MaxChainIDLen)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("chain id has a byte outside printable ASCII at offset %d", i)
		}
	}
	return nil
}

// HashLine returns the hex SHA-256 of one line's exact bytes, without the
// trailing newline. It is what the next line of the chain carries in "prev".
//
// Every sealed event takes one: the hex is written into an array, so that
// the string is its only allocation (hex.EncodeToString made two).
func HashLine(line []byte) string {
	sum := sha256.Sum256(line)
	var buf [2 * sha256.Size]byte
	hex.Encode(buf[:], sum[:])
	return string(buf[:])
}

// Chain seals events into the lines of one hash chain: it numbers them
// (seq from 1), stamps them, links each to the exact bytes of the line before
// it and encodes them.
//
// The first line of a chain has an empty "prev" (""): there is no previous
// line to hash.
//
// A Chain is not safe for concurrent use; a sink serialises Seal calls and
// writes the lines in the order they were sealed.
type Chain struct {
	id       string
	seq      uint64
	head     string    // hash of the last sealed line, "" before the first
	lastTime time.Time // time of the last sealed line
	buf      bytes.Buffer
}

// NewChain starts a new, empty chain named id. The id is checked by Seal
// (see ValidChainID).
func NewChain(id string) *Chain {
	return &Chain{id: id}
}

// ResumeChain continues the chain whose last written line is lastLine
// (without its trailing newline): the chain id, seq and time come from that
// line, and the next line will link to its hash.
func ResumeChain(lastLine []byte) (*Chain, error) {
	ev, err := ParseLine(lastLine)
	if err != nil {
		return nil, fmt.Errorf("audit: resume chain: %w", err)
	}
	if ev.V != Version {
		return nil, fmt.Errorf("audit: resume chain: unsupported version %d", ev.V)
	}
	if err := ValidChainID(ev.Chain); err != nil {
		return nil, fmt.Errorf("audit: resume chain: %w", err)
	}
	if ev.Seq == 0 {
		return nil, errors.New("audit: resume chain: last line has seq 0")
	}
	t, err := parseTime(ev.Time)
	if err != nil {
		return nil, fmt.Errorf("audit: resume chain: %w", err)
	}
	return &Chain{id: ev.Chain, seq: ev.Seq, head: HashLine(lastLine), lastTime: t}, nil
}

// ID returns the chain id.
func (c *Chain) ID() string { return c.id }

// Head returns the seq and hash of the last sealed line; (0, "") before the
// first.
func (c *Chain) Head() (seq uint64, hash string) { return c.seq, c.head }

// LastTime returns the time of the last sealed line (of the line resumed
// from); zero before the first. The next line's time is not before it.
func (c *Chain) LastTime() time.Time { return c.lastTime }

// Clone returns an independent copy of the chain state. A sink seals a batch
// into a clone and keeps it only once the batch is durable, so a failed write
// leaves the chain linked to the last durable line.
func (c *Chain) Clone() *Chain {
	return &Chain{id: c.id, seq: c.seq, head: c.head, lastTime: c.lastTime}
}

// Seal fills in the chain fields of ev (v, seq, time, chain, prev), encodes it
// as one JSON line and advances the chain. It returns the line without a
// trailing newline; the caller writes it followed by '\n'.
//
// The time is now in UTC; should the clock step back, the time of the
// previous line is used instead, so times in a chain never decrease. A line
// longer than MaxLineBytes is refused. On error the chain does not advance
// (ev's chain fields may already be overwritten).
func (c *Chain) Seal(ev *Event, now time.Time) ([]byte, error) {
	c.buf.Reset()
	line, t, err := c.seal(&c.buf, ev, now)
	if err != nil {
		return nil, err
	}
	out := make([]byte, len(line))
	copy(out, line)
	c.advance(ev.Seq, out, t)
	return out, nil
}

// SealTo is Seal writing the line and its '\n' at the end of w instead of
// returning a copy of it: the same bytes, the same checks, the chain
// advanced the same way. On error w is as it was. A sink that builds its
// batch in w seals each event without a copy, and without the chain's own
// buffer (a Clone starts without one and grew it for every batch).
func (c *Chain) SealTo(w *bytes.Buffer, ev *Event, now time.Time) error {
	line, t, err := c.seal(w, ev, now)
	if err != nil {
		return err
	}
	c.advance(ev.Seq, line, t)
	return nil
}

// seal checks ev, fills in its chain fields and appends its line and a
// '\n' to w, returning the line (aliasing w) and its time; on error w is as
// it was. The chain does not advance: advance does, with the line.
func (c *Chain) seal(w *bytes.Buffer, ev *Event, now time.Time) (line []byte, t time.Time, err error) {
	if ev == nil {
		return nil, t, errors.New("audit: seal: nil event")
	}
	if err := ValidChainID(c.id); err != nil {
		return nil, t, fmt.Errorf("audit: seal: %w", err)
	}
	if ev.Type == "" {
		return nil, t, errors.New("audit: seal: event has no type")
	}
	if (ev.Type == TypeCheckpoint) != (ev.Checkpoint != nil) {
		return nil, t, errors.New("audit: seal: the checkpoint field is set on checkpoint events and only on them")
	}
	t, err = c.sealTime(now)
	if err != nil {
		return nil, t, fmt.Errorf("audit: seal: %w", err)
	}
	if cp := ev.Checkpoint; cp != nil && cp.Version >= 2 {
		// A version 2 checkpoint signed its own time and head: sealed at
		// another time, or after another line, it would not verify.
		if ev.Time != t.Format(TimeFormat) || cp.HeadSeq != c.seq || cp.HeadHash != c.head {
			return nil, t, errors.New("audit: seal: a checkpoint must be sealed right after it is made, with the same time")
		}
	}
	ev.V = Version
	ev.Seq = c.seq + 1
	ev.Time = t.Format(TimeFormat)
	ev.Chain = c.id
	ev.Prev = c.head

	n := w.Len()
	line, err = appendLine(w, ev)
	if err != nil {
		w.Truncate(n)
		return nil, t, fmt.Errorf("audit: seal: encode %s event: %w", ev.Type, err)
	}
	if len(line) > MaxLineBytes {
		w.Truncate(n)
		return nil, t, fmt.Errorf("audit: seal: %s event is %d bytes, more than %d", ev.Type, len(line), MaxLineBytes)
	}
	return line, t, nil
}

// advance makes line, sealed as seq at t, the chain's last line.
func (c *Chain) advance(seq uint64, line []byte, t time.Time) {
	c.seq = seq
	c.head = HashLine(line)
	c.lastTime = t
}

// sealTime is the time Seal gives a line sealed at now: now in UTC, or the
// time of the last line should the clock have stepped back.
func (c *Chain) sealTime(now time.Time) (time.Time, error) {
	t := now.UTC()
	if t.Before(c.lastTime) {
		t = c.lastTime
	}
	if y := t.Year(); y < 1 || y > 9999 {
		return time.Time{}, fmt.Errorf("year %d cannot be written", y)
	}
	return t, nil
}

// appendLine appends ev's line as Seal writes it (encodeLine's bytes) and
// a '\n' to w and returns the line, aliasing w. json.Encoder writes nothing
// on error.
func appendLine(w *bytes.Buffer, ev *Event) ([]byte, error) {
	n := w.Len()
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(ev); err != nil {
		return nil, err
	}
	b := w.Bytes()
	return b[n : len(b)-1], nil
}

// encodeLine encodes ev as Seal writes it (compact JSON, fields in Event
// order, HTML characters not escaped) into buf and returns the line without
// a trailing newline. The result aliases buf.
func encodeLine(buf *bytes.Buffer, ev *Event) ([]byte, error) {
	buf.Reset()
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(ev); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte{'\n'}), nil
}

// parseTime parses a "time" field strictly: it must be exactly what
// TimeFormat writes for a UTC time.
func parseTime(s string) (time.Time, error) {
	t, err := time.Parse(TimeFormat, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("time %q is not in TimeFormat", s)
	}
	if t.UTC().Format(TimeFormat) != s {
		return time.Time{}, fmt.Errorf("time %q is not fixed-width UTC", s)
	}
	return t, nil
}
