package audit

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxLineBytes bounds the length of one audit line.
const MaxLineBytes = 1 << 20

// Sentinels.
var (
	// ErrMalformed is wrapped by ParseLine errors.
	ErrMalformed = errors.New("malformed audit line")
	// ErrTampered is wrapped by the error Verify returns when the log fails
	// verification.
	ErrTampered = errors.New("audit log failed verification")
)

// ParseLine decodes one audit line (without its trailing newline) strictly:
// the line is exactly one JSON object in valid UTF-8, with no unknown field
// and nothing before or after it. It does not check the chain; Verify does.
//
// encoding/json matches field names case-insensitively and keeps the last
// of duplicated keys; neither can hide a change, because the chain hashes the
// exact bytes of each line.
func ParseLine(b []byte) (*Event, error) {
	switch {
	case len(b) == 0:
		return nil, fmt.Errorf("%w: empty line", ErrMalformed)
	case len(b) > MaxLineBytes:
		return nil, fmt.Errorf("%w: line is longer than %d bytes", ErrMalformed, MaxLineBytes)
	case b[0] != '{' || b[len(b)-1] != '}':
		return nil, fmt.Errorf("%w: not a single JSON object with nothing around it", ErrMalformed)
	case bytes.IndexByte(b, '\n') >= 0:
		return nil, fmt.Errorf("%w: line contains a newline", ErrMalformed)
	case !utf8.Valid(b):
		return nil, fmt.Errorf("%w: not valid UTF-8", ErrMalformed)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var ev Event
	if err := dec.Decode(&ev); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the JSON object", ErrMalformed)
	}
	return &ev, nil
}

// Input is one audit file to verify.
type Input struct {
	Name string // for Problem.File
	R    io.Reader
	// Live: a running writer holds the file. Its incomplete last line is
	// then a batch being written (Report.BeingWritten), not a problem.
	Live bool
}

// VerifyOptions say how Verify checks checkpoints.
type VerifyOptions struct {
	// Keys are the Ed25519 checkpoint keys, by key id (Ed25519KeyID).
	Keys map[string]ed25519.PublicKey
	// VerifyFunc checks signatures made by keys not in Keys (a Vault
	// transit key, for example). Optional.
	VerifyFunc VerifyFunc
	// RequireCheckpoint makes lines not covered by a verified checkpoint a
	// failure: every chain must end with a valid checkpoint.
	RequireCheckpoint bool
	// AllowTrimmedStart accepts a chain whose first line in the files has
	// a seq above 1: its oldest files were removed on purpose (retention).
	// That line must be a file's first: retention removes whole files, and
	// a chain that starts further on in a file lost lines from it (a
	// problem all the same).
	// The chain is verified from that line (ChainReport.FirstSeq,
	// TrimmedStart): its prev cannot be checked, but its bytes are covered,
	// through the prev of each line after it, by the first verified
	// checkpoint after it, as every other line is. Whether the lines
	// before it existed and what they said can no longer be told. Without
	// it such a chain is a problem (lines or files missing from its start).
	AllowTrimmedStart bool
	// MaxProblems caps Report.Problems; 0 means 100.
	MaxProblems int
	// ExpectSeq names, by chain id, a seq the chain must reach: one seen
	// outside the files, such as the broker's keytrail_audit_last_seq as
	// monitoring kept it. A chain that ends before it, or is not in the
	// files, is a problem: lines were removed from its end, which nothing
	// in the files shows when the cut is at a checkpoint. The key ""
	// stands for the only chain in the files (a problem when they hold
	// none or several).
	ExpectSeq map[string]uint64
	// Parsed, when set, is called with what each complete line read (one
	// with its newline) decodes to, in order: the event ParseLine returns,
	// or its error (ErrMalformed: not a well-formed event, or longer than
	// MaxLineBytes). A reader that wants the events as well as the check
	// (an offline trace) then decodes each line once. The event is the
	// one Verify checks: neither may change it.
	Parsed func(ev *Event, err error)
}

// Problem is one line that failed verification, or a file that did (Line
// 0: an empty log, a journal that cannot be compared with its file).
type Problem struct {
	File  string `json:"file"`
	Line  int    `json:"line,omitempty"` // 1-based line number in File; 0: the whole file
	Chain string `json:"chain,omitempty"`
	Seq   uint64 `json:"seq,omitempty"`
	Why   string `json:"why"`
}

// String is "file:line (seq n): why", or "file: why" for a whole file.
func (p Problem) String() string {
	s := p.File
	if p.Line > 0 {
		s += fmt.Sprintf(":%d", p.Line)
	}
	if p.Seq != 0 {
		s += fmt.Sprintf(" (seq %d)", p.Seq)
	}
	return s + ": " + p.Why
}

// ChainReport is what Verify learnt about one chain.
type ChainReport struct {
	Chain    string `json:"chain"`
	Lines    int    `json:"lines"`
	FirstSeq uint64 `json:"first_seq"`
	// TrimmedStart: the chain's first line in the files has a seq above 1
	// (FirstSeq); the lines before it are not in the files. With
	// VerifyOptions.AllowTrimmedStart the chain was verified from FirstSeq,
	// otherwise its first line is a problem.
	TrimmedStart bool   `json:"trimmed_start,omitempty"`
	LastSeq      uint64 `json:"last_seq"`
	LastHash     string `json:"last_hash"`
	// LastTime is the time of the last line (as written). Lines removed
	// from the end of a chain up to a checkpoint, or its newest files
	// removed whole, leave no trace in the files: compare LastSeq and
	// LastTime with a copy kept elsewhere (VerifyOptions.ExpectSeq).
	LastTime string `json:"last_time,omitempty"`
	// Checkpoints counts checkpoints whose head and signature verified.
	Checkpoints int `json:"checkpoints"`
	// UncheckedCheckpoints counts checkpoints whose signature could not be
	// checked because no key was given at all. They cover nothing.
	UncheckedCheckpoints int `json:"unchecked_checkpoints,omitempty"`
	// LastCheckpointSeq is the seq of the last verified checkpoint line.
	LastCheckpointSeq uint64 `json:"last_checkpoint_seq,omitempty"`
	// SignedSeq and SignedTime are the seq and time of the newest line
	// whose time a verified signature covers: the last verified
	// checkpoint line itself (LastCheckpointSeq) when it is of version 2,
	// which signs its own time and request_id, and the line it signs
	// (LastCheckpointSeq-1) when it is of version 1, as brokers before
	// version 2 wrote them. A version 1 checkpoint line's own time and
	// request_id are not signed: when the chain ends with one, LastTime
	// is only what that line says, and whoever can write the file can
	// move it (forward, to make a chain cut at an older checkpoint look as
	// recent as the one removed); SignedTime is the time to rely on.
	SignedSeq  uint64 `json:"signed_seq,omitempty"`
	SignedTime string `json:"signed_time,omitempty"`
	// UnsignedTail counts the lines after the last verified checkpoint (all
	// lines when there is none). No signature covers them: whoever can
	// write the file can add or change them (relinking prev) and remove
	// lines from the end, and leave no trace.
	UnsignedTail int `json:"unsigned_tail"`
	// UnsignedResumed lists, in order, the ranges of lines that no
	// checkpoint covered when a broker resumed the chain (at its start),
	// as its start event records them (DetailUnsignedResumed): the
	// checkpoints after the restart sign them, so nothing else tells
	// them from lines the broker wrote. An unclean stop leaves such a
	// range; so does whoever added lines to the file while no broker
	// held it. A notice, not a problem. At most maxResumedRanges are
	// kept per chain; UnsignedResumedOmitted counts the others.
	UnsignedResumed        []ResumedRange `json:"unsigned_resumed,omitempty"`
	UnsignedResumedOmitted int            `json:"unsigned_resumed_omitted,omitempty"`
	// UnrecordedResumed lists the lines no verified checkpoint covers
	// before a start event (policy_load, trigger "start") that its record
	// leaves out, as Verify computes them from the files (only when
	// signatures are checked): all of them when it records none (a broker
	// before the record, or lines it wrote before its start event), the
	// first ones when a broker before the whole range was recorded cut it
	// at 1,000 lines (last_checkpoint_seq 0). AtSeq is the start event's
	// seq, LastCheckpointSeq the last verified checkpoint before the lines.
	// A warning, not a problem; a record that names a checkpoint before
	// its range yet leaves such lines out is a problem. At most
	// maxResumedRanges are kept per chain; UnrecordedResumedOmitted counts
	// the others.
	UnrecordedResumed        []ResumedRange `json:"unrecorded_resumed,omitempty"`
	UnrecordedResumedOmitted int            `json:"unrecorded_resumed_omitted,omitempty"`
}

// DetailUnsignedResumed is the key, in the details of a broker's start
// event (policy_load, trigger "start"), of the lines no checkpoint covered
// when it resumed the chain: {first_seq, last_seq, lines,
// last_checkpoint_seq}. Absent when there were none.
const DetailUnsignedResumed = "unsigned_resumed"

// maxResumedRanges caps ChainReport.UnsignedResumed and UnrecordedResumed.
const maxResumedRanges = 100

// maxTailCPs caps chainState.tailCPs.
const maxTailCPs = 1024

// ResumedRange is one DetailUnsignedResumed record (ChainReport.UnsignedResumed).
type ResumedRange struct {
	// AtSeq is the seq of the start event that records the range.
	AtSeq    uint64 `json:"at_seq"`
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
	Lines    int    `json:"lines"`
	// LastCheckpointSeq is the seq of the checkpoint before the range; 0
	// when the broker found none of its own in its file (it counted from
	// the file's first line; brokers before the whole range was recorded
	// counted at most checkpoint_every lines: there may be more).
	LastCheckpointSeq uint64 `json:"last_checkpoint_seq"`
	// VerifiedCheckpointSeq and VerifiedCheckpointKeyID name the newest
	// checkpoint inside the range that verified (signatures checked): one
	// the broker could not check as its own, a key before a change of
	// checkpoint key (an over-report of the lines it signed).
	VerifiedCheckpointSeq   uint64 `json:"verified_checkpoint_seq,omitempty"`
	VerifiedCheckpointKeyID string `json:"verified_checkpoint_key_id,omitempty"`
}

// resumedRange reads DetailUnsignedResumed from ev's details; present is
// false when it is absent, err says why it is not a record: an object with
// first_seq, last_seq, lines and last_checkpoint_seq, non-negative
// integers, 1 <= first_seq <= last_seq < ev's seq, lines >= 1 and
// last_checkpoint_seq 0 or before first_seq, and lines last_seq - first_seq
// + 1 (or more when first_seq is last_checkpoint_seq + 1: a broker counting
// back past lines that are not the chain's, added to the file, or through
// seqs that do not count up, an edited file, starts the range there). Other
// fields (a later broker's) are ignored.
func resumedRange(ev *Event) (r ResumedRange, present bool, err error) {
	v, found := ev.Details[DetailUnsignedResumed]
	if !found {
		return r, false, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return r, true, err
	}
	var raw struct {
		FirstSeq          *uint64 `json:"first_seq"`
		LastSeq           *uint64 `json:"last_seq"`
		Lines             *int    `json:"lines"`
		LastCheckpointSeq *uint64 `json:"last_checkpoint_seq"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return r, true, errors.New("not an object of non-negative integers first_seq, last_seq, lines, last_checkpoint_seq")
	}
	if raw.FirstSeq == nil || raw.LastSeq == nil || raw.Lines == nil || raw.LastCheckpointSeq == nil {
		return r, true, errors.New("first_seq, last_seq, lines and last_checkpoint_seq are required")
	}
	r = ResumedRange{AtSeq: ev.Seq, FirstSeq: *raw.FirstSeq, LastSeq: *raw.LastSeq, Lines: *raw.Lines, LastCheckpointSeq: *raw.LastCheckpointSeq}
	switch {
	case r.FirstSeq < 1 || r.FirstSeq > r.LastSeq || r.LastSeq >= ev.Seq:
		return r, true, fmt.Errorf("seq %d..%d is not a range of lines before the start event (seq %d)", r.FirstSeq, r.LastSeq, ev.Seq)
	case r.Lines < 1:
		return r, true, fmt.Errorf("lines %d: a range has at least one", r.Lines)
	case r.LastCheckpointSeq >= r.FirstSeq:
		return r, true, fmt.Errorf("last_checkpoint_seq %d is not before first_seq %d", r.LastCheckpointSeq, r.FirstSeq)
	case uint64(r.Lines) < r.LastSeq-r.FirstSeq+1 || uint64(r.Lines) > r.LastSeq-r.FirstSeq+1 && r.FirstSeq != r.LastCheckpointSeq+1:
		// A broker counts the lines back and sets first_seq from the
		// count; only more lines than seqs after its checkpoint (a line
		// that is not the chain's added to the file, or seqs that do not
		// count up: an edited file) start the range right after it (at 1
		// when there is none).
		return r, true, fmt.Errorf("lines %d does not match seq %d..%d (%d line(s))", r.Lines, r.FirstSeq, r.LastSeq, r.LastSeq-r.FirstSeq+1)
	}
	return r, true, nil
}

// isStartEvent reports whether ev is a broker's start event: policy_load
// with details.trigger "start".
func isStartEvent(ev *Event) bool {
	t, _ := ev.Details["trigger"].(string)
	return ev.Type == TypePolicyLoad && t == "start"
}

// Report is the result of Verify.
type Report struct {
	Files int `json:"files"`
	Lines int `json:"lines"`
	// SignaturesChecked is false when no key was given: checkpoint heads
	// are still checked, their signatures are not.
	SignaturesChecked bool          `json:"signatures_checked"`
	Chains            []ChainReport `json:"chains"`
	// Problems lists failed lines in the order found; the first one is the
	// earliest evidence of tampering.
	Problems []Problem `json:"problems,omitempty"`
	// ProblemsOmitted counts problems beyond VerifyOptions.MaxProblems.
	ProblemsOmitted int `json:"problems_omitted,omitempty"`
	// BeingWritten lists the incomplete last lines of live inputs, not
	// verified (nor counted in Lines) and not a problem.
	BeingWritten []Pending `json:"being_written,omitempty"`
}

// Pending is the incomplete last line of a live input: a batch its writer
// is in the middle of writing, Bytes of it so far.
type Pending struct {
	File  string `json:"file"`
	Line  int    `json:"line"`
	Bytes int    `json:"bytes"`
}

// OK reports whether verification found no problem.
func (r *Report) OK() bool { return len(r.Problems) == 0 && r.ProblemsOmitted == 0 }

// VerifyFiles runs Verify over the named files, in the order given (rotated
// files oldest first), each read through a LineReader.
func VerifyFiles(paths []string, opts VerifyOptions) (*Report, error) {
	inputs := make([]Input, 0, len(paths))
	files := make([]*os.File, 0, len(paths))
	defer func() {
		for _, f := range files {
			_ = f.Close()
		}
	}()
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("audit: verify: %w", err)
		}
		files = append(files, f)
		inputs = append(inputs, Input{Name: p, R: NewLineReader(f, 0)})
	}
	return Verify(inputs, opts)
}

// Verify checks audit files, given in order (a chain may span several
// rotated files; several chains may interleave in one file). Per chain it
// checks that seq starts at 1 and grows by one, that prev is the hash of the
// previous line of the same chain, that v is Version, that times parse and
// never decrease, and that every checkpoint names the line before it as its
// head and carries a valid signature of a known key. A checkpoint line must
// also be exactly what a sink writes for one (chain fields, type,
// request_id, checkpoint): the last line of a chain is normally a
// checkpoint, and no later prev covers its bytes. A version 2 checkpoint
// signs its own time and request_id too, so only its signature could then
// be changed unseen, for its twin under a malleable scheme (ECDSA: (r, n-s)
// for (r, s)); of a version 1 checkpoint (brokers before version 2), its
// request_id and its time (it must still not precede the line before it;
// ChainReport.SignedTime is the newest signed time) could be changed as
// well. Lines after the last
// verified checkpoint are reported as ChainReport.UnsignedTail, and are a
// problem when opts.RequireCheckpoint is set. A chain that ends before the
// seq opts.ExpectSeq gives it is a problem too.
//
// Each cause is one problem: Verify resynchronises on every line it reads,
// and a line it cannot read (malformed, torn, too long, a bad chain id) is
// one problem, not also the next line of its chain, whose seq skips it and
// whose prev links to bytes no longer in the files (a gap larger than the
// unreadable lines between that line and the one before it in its chain is
// still a problem, and each unreadable line accounts for one skipped seq of
// one chain only, one whose gap it lies in). The line before the unreadable one in that chain is then
// checked by no later prev (its successor's was the only check on it): the
// unreadable line's problem says so, naming it, rather than a problem of its
// own. Which chain an unreadable line belonged to cannot be read from it:
// it is taken as the chain whose gap it fills first, in the order read.
//
// Verify returns the report and, when it found a problem, an error wrapping
// ErrTampered that names the first problem. An error reading an input is
// returned as is, with the report so far.
func Verify(inputs []Input, opts VerifyOptions) (*Report, error) {
	v := &verifier{
		opts:   opts,
		rep:    &Report{SignaturesChecked: len(opts.Keys) > 0 || opts.VerifyFunc != nil},
		chains: map[string]*chainState{},
	}
	if v.opts.MaxProblems <= 0 {
		v.opts.MaxProblems = 100
	}
	for _, in := range inputs {
		v.rep.Files++
		if err := v.file(in); err != nil {
			v.finish()
			return v.rep, err
		}
	}
	v.finish()
	v.expect(inputs)
	if v.opts.RequireCheckpoint && len(v.rep.Chains) == 0 {
		// Nothing is covered by a checkpoint: a broker writes at least its
		// policy_load event when it starts, so an empty log is an emptied
		// one or not a broker's.
		name := ""
		if len(inputs) > 0 {
			name = inputs[len(inputs)-1].Name
		}
		v.problem(Problem{File: name, Why: "no audit lines: nothing is covered by a verified checkpoint (a broker writes at least its policy_load event when it starts)"})
	}
	if !v.rep.OK() {
		n := len(v.rep.Problems) + v.rep.ProblemsOmitted
		return v.rep, fmt.Errorf("%w: %d problem(s), first at %s", ErrTampered, n, v.rep.Problems[0])
	}
	return v.rep, nil
}

type chainState struct {
	idx         int // into Report.Chains
	lastSeq     uint64
	lastHash    string
	lastTime    time.Time
	lastFile    string
	lastLine    int
	lastTimeRaw string // "time" of the last line, as written
	// first line of the unsigned tail
	tailFile string
	tailLine int
	tailSeq  uint64
	// lastCPKey is the key id of the last verified checkpoint
	// (ChainReport.LastCheckpointSeq).
	lastCPKey string
	// tailCPs are the seqs of the lines typed checkpoint in the unsigned
	// tail (not verified: each is a problem of its own, or unchecked),
	// the first maxTailCPs of them (tailCPsFull: more); see resumed.
	tailCPs     []uint64
	tailCPsFull bool
	// unread is verifier.unread when the chain's last line was read: the
	// lines no chain could be told from since are verifier.unread minus
	// it.
	unread int
}

type verifier struct {
	opts   VerifyOptions
	rep    *Report
	chains map[string]*chainState
	// unread counts the lines read so far that are a problem of their own
	// and belong to no chain that could be told (malformed, too long,
	// torn, a bad chain id). The seqs they held are missing from their
	// chain; see line.
	unread int
	// claimed has a bit per unreadable line (by its order among them),
	// set once a chain has taken the line for a seq it skips: each
	// unreadable line stands for one line of one chain, so it hides at
	// most one missing seq, in one chain, and only in a chain whose
	// window (the lines since its previous line) holds it.
	claimed []uint64
	// unreadableProblems holds, for the first unreadable lines (those
	// whose problem is in Report.Problems: once MaxProblems is reached
	// none is added), the index of their problem, to complete when a
	// chain takes the line (see line).
	unreadableProblems []int
}

// unreadableProblem records the problem of a line no chain can be told
// from (malformed, too long, torn, a bad chain id).
func (v *verifier) unreadableProblem(p Problem) {
	if len(v.rep.Problems) < v.opts.MaxProblems && len(v.unreadableProblems) == v.unread {
		v.unreadableProblems = append(v.unreadableProblems, len(v.rep.Problems))
	}
	if v.unread%64 == 0 {
		v.claimed = append(v.claimed, 0)
	}
	v.unread++
	v.problem(p)
}

func (v *verifier) isClaimed(i int) bool { return v.claimed[i/64]&(1<<(i%64)) != 0 }

// unclaimedFrom reports whether at least n of the unreadable lines from
// the from-th on are not taken by any chain.
func (v *verifier) unclaimedFrom(from int, n uint64) bool {
	for i := from; i < v.unread && n > 0; i++ {
		if !v.isClaimed(i) {
			n--
		}
	}
	return n == 0
}

// claimUnreadable marks the gap earliest unclaimed unreadable lines from
// the from-th on as taken by a chain for the seqs it skips. When the chain
// had a line before them (prevFile:prevLine, seq prevSeq), the first one's
// problem says that this line is no longer checked by a later prev: its
// successor in the chain, the unreadable line, was the only check on it,
// and the line after that links to bytes no longer in the files.
func (v *verifier) claimUnreadable(from int, gap uint64, chain, prevFile string, prevLine int, prevSeq uint64) {
	first := true
	for i := from; i < v.unread && gap > 0; i++ {
		if v.isClaimed(i) {
			continue
		}
		v.claimed[i/64] |= 1 << (i % 64)
		gap--
		if first && prevLine > 0 && i < len(v.unreadableProblems) {
			v.rep.Problems[v.unreadableProblems[i]].Why += fmt.Sprintf("; the line before it in chain %s (seq %d, %s:%d) is not checked by a later prev", chain, prevSeq, prevFile, prevLine)
		}
		first = false
	}
}

func (v *verifier) problem(p Problem) {
	if len(v.rep.Problems) >= v.opts.MaxProblems {
		v.rep.ProblemsOmitted++
		return
	}
	v.rep.Problems = append(v.rep.Problems, p)
}

func (v *verifier) file(in Input) error {
	r := bufio.NewReaderSize(in.R, 64<<10)
	for lineNo := 1; ; lineNo++ {
		raw, terminated, tooLong, err := readLine(r)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("audit: verify: read %s: %w", in.Name, err)
		}
		if !terminated && !tooLong && in.Live {
			v.rep.BeingWritten = append(v.rep.BeingWritten, Pending{File: in.Name, Line: lineNo, Bytes: len(raw)})
			return nil
		}
		v.rep.Lines++
		switch {
		case tooLong:
			if v.opts.Parsed != nil {
				v.opts.Parsed(nil, fmt.Errorf("%w: line is longer than %d bytes", ErrMalformed, MaxLineBytes))
			}
			v.unreadableProblem(Problem{File: in.Name, Line: lineNo, Why: fmt.Sprintf("line is longer than %d bytes", MaxLineBytes)})
		case !terminated:
			v.unreadableProblem(Problem{File: in.Name, Line: lineNo, Why: "incomplete last line (no trailing newline): a torn or cut write"})
		default:
			v.line(in.Name, lineNo, raw)
		}
	}
}

// readLine returns the next line without its newline. terminated is false
// for a last line without newline; err is io.EOF only when nothing was left.
// The line is valid until the next read of r: one that fits in r's buffer
// is not copied.
func readLine(r *bufio.Reader) (line []byte, terminated, tooLong bool, err error) {
	frag, err := r.ReadSlice('\n')
	if err == nil {
		return frag[:len(frag)-1], true, false, nil
	}
	for {
		if !tooLong {
			if len(line)+len(frag) > MaxLineBytes+1 {
				tooLong, line = true, nil
			} else {
				line = append(line, frag...)
			}
		}
		switch {
		case err == nil:
			if !tooLong {
				line = line[:len(line)-1]
			}
			return line, true, tooLong, nil
		case errors.Is(err, bufio.ErrBufferFull):
			frag, err = r.ReadSlice('\n')
		case errors.Is(err, io.EOF):
			if len(line) == 0 && !tooLong {
				return nil, false, false, io.EOF
			}
			return line, false, tooLong, nil
		default:
			return nil, false, false, err
		}
	}
}

func (v *verifier) line(file string, lineNo int, raw []byte) {
	ev, err := ParseLine(raw)
	if v.opts.Parsed != nil {
		v.opts.Parsed(ev, err)
	}
	if err != nil {
		v.unreadableProblem(Problem{File: file, Line: lineNo, Why: err.Error()})
		return
	}
	if err := ValidChainID(ev.Chain); err != nil {
		v.unreadableProblem(Problem{File: file, Line: lineNo, Seq: ev.Seq, Why: "bad chain id: " + err.Error()})
		return
	}
	st, seen := v.chains[ev.Chain]
	// afterUnread: the seqs missing before this line are as many as, or
	// fewer than, the unreadable lines (each already a problem) between
	// the chain's previous line (or the start) and this one: they are
	// those lines, whose bytes, and so whose hash, cannot be known. This
	// line's prev cannot be checked, and is not a second problem of the
	// same cause. A gap larger than the unreadable lines around it is a
	// problem, as is any gap with none. The lines it takes are no longer
	// there to explain another chain's gap (v.claimed): one unreadable
	// line does not hide a deletion in every chain of the files, nor does
	// one read before the chain's previous line.
	// The line before them in the chain is then checked by no later prev
	// (its successor was one of them): their first problem says so.
	var gap uint64
	from := 0 // the first unreadable line of the chain's window
	if seen {
		if ev.Seq > st.lastSeq+1 {
			gap, from = ev.Seq-st.lastSeq-1, st.unread
		}
	} else if ev.Seq > 1 {
		gap = ev.Seq - 1
	}
	afterUnread := gap > 0 && gap <= uint64(v.unread-from) && v.unclaimedFrom(from, gap)
	if afterUnread {
		if seen {
			v.claimUnreadable(from, gap, ev.Chain, st.lastFile, st.lastLine, st.lastSeq)
		} else {
			v.claimUnreadable(from, gap, ev.Chain, "", 0, 0)
		}
	}
	if !seen {
		st = &chainState{idx: len(v.rep.Chains)}
		v.chains[ev.Chain] = st
		first := ev.Seq
		if afterUnread {
			first = 1 // its first lines are in the files, unreadable
		}
		v.rep.Chains = append(v.rep.Chains, ChainReport{Chain: ev.Chain, FirstSeq: first, TrimmedStart: first > 1})
	}
	cr := &v.rep.Chains[st.idx]

	why := ""
	t, terr := parseTime(ev.Time)
	switch {
	case ev.V != Version:
		why = fmt.Sprintf("unsupported version v=%d", ev.V)
	case afterUnread && !isHash(ev.Prev):
		why = fmt.Sprintf("seq %d has a prev that is not a SHA-256 hash: a line after the first links to the line before it", ev.Seq)
	case !seen && ev.Seq != 1 && !v.opts.AllowTrimmedStart && !afterUnread:
		why = fmt.Sprintf("chain starts at seq %d, not 1: earlier lines or files are missing (if they were removed on purpose, by retention, allow a trimmed start to verify from here), or files are out of order", ev.Seq)
	case !seen && ev.Seq != 1 && lineNo != 1 && !afterUnread:
		// Retention removes whole files: a trimmed start is a file's
		// first line. One further on lost lines from its file.
		why = fmt.Sprintf("chain starts at seq %d on line %d of its file, not on a file's first line: lines were removed from the file (retention removes whole files only)", ev.Seq, lineNo)
	case !seen && ev.Seq != 1 && !isHash(ev.Prev):
		why = fmt.Sprintf("chain starts at seq %d with a prev that is not a SHA-256 hash: a line after the first links to the line before it", ev.Seq)
	case seen && ev.Seq <= st.lastSeq:
		why = fmt.Sprintf("seq %d after seq %d (%s:%d): a line was duplicated, inserted or reordered", ev.Seq, st.lastSeq, st.lastFile, st.lastLine)
	case seen && ev.Seq != st.lastSeq+1 && !afterUnread:
		why = fmt.Sprintf("seq gap: expected %d, got %d: lines were deleted or reordered, or a file is missing", st.lastSeq+1, ev.Seq)
	case !seen && ev.Seq == 1 && ev.Prev != "":
		why = "first line of the chain has a non-empty prev"
	case seen && ev.Prev != st.lastHash && !afterUnread:
		why = fmt.Sprintf("prev hash mismatch: the previous line of this chain (%s:%d) was changed, or a line was inserted, deleted or reordered", st.lastFile, st.lastLine)
	case terr != nil:
		why = "bad time: " + terr.Error()
	case seen && t.Before(st.lastTime):
		why = fmt.Sprintf("time goes backwards: %s after %s", ev.Time, st.lastTime.Format(TimeFormat))
	case ev.Type == "":
		why = "event has no type"
	case ev.Type != TypeCheckpoint && ev.Checkpoint != nil:
		why = fmt.Sprintf("checkpoint field on a %q event", ev.Type)
	case ev.Type == TypeCheckpoint && ev.Checkpoint == nil:
		why = "checkpoint event without checkpoint field"
	}

	covered, unchecked := false, false
	if why == "" && ev.Type == TypeCheckpoint {
		// The signature covers the head; the checkpoint line's own bytes
		// are covered only by the next line's prev, and the last line of
		// a chain is normally a checkpoint: it must be exactly what a
		// sink writes.
		why, unchecked = v.checkpoint(ev)
		covered = why == "" && !unchecked
		if why == "" {
			why = checkpointForm(raw, ev)
		}
	}
	if why != "" {
		v.problem(Problem{File: file, Line: lineNo, Chain: ev.Chain, Seq: ev.Seq, Why: why})
	}

	// Resynchronise on this line whatever its problem, so one tampered
	// line yields one problem rather than a cascade.
	// The time too: a line moved back (or far forward) in time is one
	// problem, not one for every later line.
	st.lastSeq, st.lastHash, st.unread = ev.Seq, HashLine(raw), v.unread
	if terr == nil {
		st.lastTime = t
	}
	headTime := st.lastTimeRaw
	st.lastTimeRaw = ev.Time
	st.lastFile, st.lastLine = file, lineNo
	cr.Lines++
	cr.LastSeq, cr.LastHash, cr.LastTime = ev.Seq, st.lastHash, ev.Time
	if ev.Details != nil {
		v.resumed(file, lineNo, ev, cr, st)
	}
	switch {
	case covered:
		cr.Checkpoints++
		cr.LastCheckpointSeq = ev.Seq
		st.lastCPKey = ev.Checkpoint.KeyID
		st.tailCPs, st.tailCPsFull = st.tailCPs[:0], false
		if ev.Checkpoint.Version >= 2 {
			cr.SignedSeq, cr.SignedTime = ev.Seq, ev.Time
		} else {
			cr.SignedSeq, cr.SignedTime = ev.Seq-1, headTime
		}
		cr.UnsignedTail = 0
	default:
		if unchecked {
			cr.UncheckedCheckpoints++
		}
		if ev.Type == TypeCheckpoint {
			if len(st.tailCPs) < maxTailCPs {
				st.tailCPs = append(st.tailCPs, ev.Seq)
			} else {
				st.tailCPsFull = true
			}
		}
		if cr.UnsignedTail == 0 {
			st.tailFile, st.tailLine, st.tailSeq = file, lineNo, ev.Seq
		}
		cr.UnsignedTail++
	}
}

// resumed reads the record of the lines a broker adopted from ev's
// details (DetailUnsignedResumed) and, when signatures are checked,
// compares it with the lines before ev that no verified checkpoint covers
// (the chain's unsigned tail so far): lines the record leaves out are
// ChainReport.UnrecordedResumed (no record, or one an older broker cut at
// 1,000 lines), or a problem when the record names a checkpoint before its
// range and yet leaves them out (no broker writes that record). A record
// that is not one is a problem. cr and st are ev's chain, its tail not yet
// counting ev.
func (v *verifier) resumed(file string, lineNo int, ev *Event, cr *ChainReport, st *chainState) {
	r, present, err := resumedRange(ev)
	if err != nil {
		v.problem(Problem{File: file, Line: lineNo, Chain: ev.Chain, Seq: ev.Seq,
			Why: fmt.Sprintf("details.%s is not a record of the lines a broker adopted: %v: the line was changed, or not written by a keytrail broker", DetailUnsignedResumed, err)})
		return
	}
	checked := v.rep.SignaturesChecked
	tail := cr.UnsignedTail // lines before ev no verified checkpoint covers, from st.tailSeq
	if !present {
		if checked && tail > 0 && isStartEvent(ev) {
			v.unrecorded(cr, ResumedRange{AtSeq: ev.Seq, FirstSeq: st.tailSeq, LastSeq: ev.Seq - 1, Lines: tail, LastCheckpointSeq: cr.LastCheckpointSeq})
		}
		return
	}
	if cp := cr.LastCheckpointSeq; checked && cp >= r.FirstSeq && cp <= r.LastSeq {
		// A checkpoint inside the range verified: the broker could not
		// check it as its own (a key before a change of key).
		r.VerifiedCheckpointSeq, r.VerifiedCheckpointKeyID = cp, st.lastCPKey
	}
	if len(cr.UnsignedResumed) < maxResumedRanges {
		cr.UnsignedResumed = append(cr.UnsignedResumed, r)
	} else {
		cr.UnsignedResumedOmitted++
	}
	if !checked || tail == 0 || st.tailSeq >= r.FirstSeq {
		return
	}
	left := ResumedRange{AtSeq: ev.Seq, FirstSeq: st.tailSeq, LastSeq: r.FirstSeq - 1, Lines: int(r.FirstSeq - st.tailSeq), LastCheckpointSeq: cr.LastCheckpointSeq}
	if r.LastCheckpointSeq == 0 {
		v.unrecorded(cr, left)
		return
	}
	if st.tailCPsFull || slices.Contains(st.tailCPs, r.LastCheckpointSeq) {
		// The checkpoint the record names is a line typed checkpoint that
		// did not verify: its own problem says so (one problem per cause).
		return
	}
	v.problem(Problem{File: file, Line: lineNo, Chain: ev.Chain, Seq: ev.Seq,
		Why: fmt.Sprintf("the start event records seq %d..%d, after the checkpoint at seq %d, as the lines its broker adopted, but no verified checkpoint covers seq %d..%d before them either: the record leaves lines out, so it was not written by a keytrail broker", r.FirstSeq, r.LastSeq, r.LastCheckpointSeq, left.FirstSeq, left.LastSeq)})
}

// unrecorded adds r to cr.UnrecordedResumed, or counts it past the cap.
func (v *verifier) unrecorded(cr *ChainReport, r ResumedRange) {
	if len(cr.UnrecordedResumed) < maxResumedRanges {
		cr.UnrecordedResumed = append(cr.UnrecordedResumed, r)
	} else {
		cr.UnrecordedResumedOmitted++
	}
}

// isHash reports whether s is what HashLine returns: 64 lower-case hex digits.
func isHash(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// checkpoint checks a checkpoint line whose seq and prev already verified.
// unchecked is true when no key was given at all.
func (v *verifier) checkpoint(ev *Event) (why string, unchecked bool) {
	cp := ev.Checkpoint
	if cp.HeadSeq != ev.Seq-1 || cp.HeadHash != ev.Prev {
		return fmt.Sprintf("checkpoint head (seq %d, hash %.16s) is not the previous line (seq %d, hash %.16s)", cp.HeadSeq, cp.HeadHash, ev.Seq-1, ev.Prev), false
	}
	if cp.Version != 0 && cp.Version != CheckpointVersion {
		return fmt.Sprintf("checkpoint version %d is not one this verifier knows (%d, or none for 1)", cp.Version, CheckpointVersion), false
	}
	sig, err := base64.StdEncoding.Strict().DecodeString(cp.Signature)
	if err != nil || len(sig) == 0 {
		return "checkpoint signature is not base64", false
	}
	if !v.rep.SignaturesChecked {
		return "", true
	}
	msg, err := CheckpointMessage(ev)
	if err != nil {
		return err.Error(), false
	}
	if pub, ok := v.opts.Keys[cp.KeyID]; ok {
		if cp.Alg != AlgEd25519 {
			return fmt.Sprintf("checkpoint alg %q does not match Ed25519 key %s", cp.Alg, cp.KeyID), false
		}
		if len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, msg, sig) {
			return fmt.Sprintf("checkpoint signature does not verify with key %s: forged, or the head was changed", cp.KeyID), false
		}
		return "", false
	}
	if v.opts.VerifyFunc != nil {
		err := v.opts.VerifyFunc(cp.KeyID, cp.Alg, msg, sig)
		switch {
		case errors.Is(err, ErrUnknownKey):
		case err != nil:
			return fmt.Sprintf("checkpoint signature does not verify with key %s: forged, or the head was changed", cp.KeyID), false
		default:
			return "", false
		}
	}
	return fmt.Sprintf("checkpoint from unknown key %q", cp.KeyID), false
}

// checkpointForm reports why a checkpoint line is not exactly the line a
// sink writes for a checkpoint: the chain fields, type, request_id and
// checkpoint, encoded as Seal encodes them. Anything else on it (an
// issuance, a credential, details, other spacing, key order or escapes) was
// put there after it was written.
func checkpointForm(raw []byte, ev *Event) string {
	bare := Event{V: ev.V, Seq: ev.Seq, Time: ev.Time, Chain: ev.Chain, Prev: ev.Prev, Type: ev.Type,
		RequestID: ev.RequestID, Checkpoint: ev.Checkpoint}
	var buf bytes.Buffer
	want, err := encodeLine(&buf, &bare)
	if err != nil {
		return "checkpoint line cannot be re-encoded: " + err.Error()
	}
	if bytes.Equal(raw, want) {
		return ""
	}
	var buf2 bytes.Buffer
	if full, err := encodeLine(&buf2, ev); err != nil || !bytes.Equal(full, want) {
		return "checkpoint line carries fields a checkpoint is not written with (only v, seq, time, chain, prev, type, request_id, checkpoint): the line was changed"
	}
	return "checkpoint line is not encoded as it is written (spacing, key order, letter case, escapes or repeated keys differ): the line was changed"
}

// expect adds the ExpectSeq problems, in chain id order.
func (v *verifier) expect(inputs []Input) {
	name := ""
	if len(inputs) > 0 {
		name = inputs[len(inputs)-1].Name
	}
	for _, chain := range slices.Sorted(maps.Keys(v.opts.ExpectSeq)) {
		want := v.opts.ExpectSeq[chain]
		if chain == "" {
			if len(v.rep.Chains) != 1 {
				ids := make([]string, len(v.rep.Chains))
				for i, c := range v.rep.Chains {
					ids[i] = c.Chain
				}
				v.problem(Problem{File: name, Why: fmt.Sprintf("seq %d is expected of the only chain, but the files hold %d chain(s) (%s): name the chain the seq is of (CHAIN=SEQ)", want, len(ids), strings.Join(ids, ", "))})
				continue
			}
			chain = v.rep.Chains[0].Chain
		}
		st, ok := v.chains[chain]
		if !ok {
			v.problem(Problem{File: name, Chain: chain, Why: fmt.Sprintf("chain %s is expected to reach seq %d but is not in the files: its files were removed, or the wrong files were given", chain, want)})
			continue
		}
		if cr := v.rep.Chains[st.idx]; cr.LastSeq < want {
			v.problem(Problem{File: st.lastFile, Line: st.lastLine, Chain: chain, Seq: cr.LastSeq,
				Why: fmt.Sprintf("the chain ends at seq %d, before seq %d, which it was seen to reach: lines %d..%d were removed from its end (the file cut, or its newest files removed)", cr.LastSeq, want, cr.LastSeq+1, want)})
		}
	}
}

// finish adds the RequireCheckpoint problems.
func (v *verifier) finish() {
	if !v.opts.RequireCheckpoint {
		return
	}
	for i := range v.rep.Chains {
		cr := &v.rep.Chains[i]
		if cr.UnsignedTail == 0 {
			continue
		}
		st := v.chains[cr.Chain]
		v.problem(Problem{File: st.tailFile, Line: st.tailLine, Chain: cr.Chain, Seq: st.tailSeq,
			Why: fmt.Sprintf("%d line(s) from here to the end of the chain are not covered by a verified checkpoint: they may have been added or changed, and lines after them removed, unseen", cr.UnsignedTail)})
	}
}
