package main

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/keytrail/keytrail/adapters/auditfile"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
	"github.com/keytrail/keytrail/policies"
)

func newAuditCmd(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:   "audit",
		Short: "Work with keytrail audit logs",
		Example: `  keytrail audit verify --key checkpoint.pub /var/lib/keytrail/audit.jsonl
  keytrail audit verify --require-checkpoint --jwks https://keytrail.internal:7700/.well-known/jwks.json /var/lib/keytrail/`,
	}
	c.AddCommand(newAuditVerifyCmd(e))
	return c
}

func newAuditVerifyCmd(e *env) *cobra.Command {
	var keyFiles, jwksSrcs, expectSeqs []string
	var requireCheckpoint, asJSON, exact, allowTrimmed bool
	c := &cobra.Command{
		Use:   "verify FILE_OR_DIR...",
		Short: "Check the hash chain and checkpoint signatures of audit files",
		Long: `verify checks every chain in the given audit files (rotated files oldest
first): seq continuity, the prev hash over the exact bytes of the previous
line, and each checkpoint's head and signature: Ed25519 (--key, a PKIX public
key PEM as 'openssl pkey -pubout' writes) or Vault transit (--jwks, the
broker's /.well-known/jwks.json as a URL, a saved file or a pipe: <(curl ...),
or - for standard input, read within 30 s; the key is picked by
kid, "<transit key>:<version>"; verify trusts it: take it from a saved copy or
another instance, not from the host whose files are checked). It names the
first bad line and why,
and reports lines after the last verified checkpoint, which no signature
covers: they may have been added or changed, and lines after them removed,
unseen (--require-checkpoint makes that a failure, and an empty log too).
A chain with no verified checkpoint at all, or files verified without a
key, are a WARNING (on stderr with --json) and the OK line says NOT SIGNED:
whoever can write the files can rewrite them whole, hash chain included,
and they pass every other check. A broker signs a checkpoint at least every
1,000 events or 60 s and when it stops, so use --require-checkpoint on files
a broker has stopped writing. A checkpoint by a key none of those given has
gets a hint (on stderr with --json): save the JWKS (or public key) while
the broker serves it.
Lines removed from the end up to a checkpoint, or the newest files removed
whole, leave no trace in the files: compare each chain's last seq and time,
printed for it, with a copy kept elsewhere, or give the seq the chain was
seen to reach, such as the highest keytrail_audit_last_seq monitoring
recorded: --expect-seq SEQ (the files hold one chain) or CHAIN=SEQ
(repeatable) fails when the chain ends before it, or is not in the files.
SEQ alone does not check the chain's id: files replaced by another chain
that reaches SEQ pass it; CHAIN=SEQ, with the chain label monitoring saw
on keytrail_audit_chain_info, checks both.

A broker that restarts signs, with its next checkpoint, the lines after the
file's last checkpoint (an unclean stop's, or lines added while no broker
held the file); its start event records them, and verify prints a notice
naming them (not a failure). With a key, verify also finds such lines
itself (those no verified checkpoint covers before a start event): lines a
start event does not record are a WARNING (a broker before the record wrote
none), and a record that names a checkpoint yet leaves such lines out is a
failure (no broker writes it), as is a record that is not one.

--jwks accepts a checkpoint signed by any key of the JWKS: the broker
serves its JWT-signing keys and its checkpoint key alike (kid
"<transit key>:<version>", use sig), so they cannot be told apart there.
Only a holder of a Vault token allowed transit/sign on one of those keys
can make such a signature (a JWT's signature cannot pass for a
checkpoint's: the signed bytes differ in form); to accept the checkpoint
key only, give a JWKS saved with only its kids.

A chain must start at seq 1 in the files. Once retention removed its oldest
files, --allow-trimmed-start verifies it from its first line present (and
says from which seq), which must be a file's first line (retention removes
whole files: a chain that starts further on in a file lost lines from that
file, a problem all the same): the first verified checkpoint after that line still
covers it, through the prev of each line in between; what the removed lines
said can no longer be checked.
A log that takes longer than 5 s gets a progress line on stderr every 5 s.
Exit status 1 when anything is wrong (also when a file cannot be read to its
end: it and the files after it are then not verified), 2 on a usage mistake.

Each FILE is read with its rotated siblings (FILE.<UTC timestamp>, as the
broker's rotation names them), oldest first, so naming the live file checks
the whole chain; a directory stands for every *.jsonl file in it with its
siblings. --exact reads only the files named, in the order given (a file
named twice, however spelled, once).

A file a running broker holds (it has the file's lock) may end in a batch
it is writing: that incomplete last line is reported as being written (not
verified, not a problem; verify again to check it). Once the files are
identified (each opened for a moment), verify lists them again and, if the
broker rotated its file in between, starts over once, rather than reporting
the renamed file as a gap. It holds one file open at a time, and reads each
as the file identified: renamed by a rotation meanwhile, it is found among
its rotated siblings; removed meanwhile, or truncated while no running
broker holds it, verify fails (exit 1) naming it (a running broker cuts a
failed write's bytes off its file: that file is read as it is; should the
cut remove lines verify has read already, it fails naming the file: run
it again).

A live audit file's journal (.<name>.wal, next to it) is compared with the
file too, unless a running broker holds the file: after an unclean stop it
holds acknowledged events that the file gets back only when the broker starts
again, and verify says so (exit status 1) instead of passing a file that is
short of them.`,
		Example: `  keytrail audit verify --key .dev/checkpoint.pub .dev/audit.jsonl
  keytrail audit verify --jwks saved-jwks.json --expect-seq 48213 /var/lib/keytrail/audit.jsonl
  keytrail audit verify --key checkpoint.pub --json --require-checkpoint /var/lib/keytrail/`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			files, err := identifyAuditFiles(e, args, exact)
			if err != nil {
				return fmt.Errorf("audit verify: %w", err)
			}
			args = files.paths
			opts := audit.VerifyOptions{RequireCheckpoint: requireCheckpoint, AllowTrimmedStart: allowTrimmed}
			if len(expectSeqs) > 0 {
				if opts.ExpectSeq, err = parseExpectSeq(expectSeqs); err != nil {
					return exitError{code: exitUsage, msg: "audit verify: " + err.Error()}
				}
			}
			if len(keyFiles) > 0 {
				opts.Keys = map[string]ed25519.PublicKey{}
				for _, kf := range keyFiles {
					pemBytes, err := policies.ReadFile(kf) // not blocked on a FIFO, nor /dev/zero read whole
					if err != nil {
						return fmt.Errorf("audit verify: --key: %w", err)
					}
					kid, pub, err := audit.LoadEd25519PublicKey(pemBytes)
					if err != nil {
						return fmt.Errorf("audit verify: --key %s: %w", kf, err)
					}
					opts.Keys[kid] = pub
				}
			}
			if len(jwksSrcs) > 0 {
				f, err := jwksVerifyFunc(cmd.Context(), jwksSrcs...)
				if err != nil {
					return fmt.Errorf("audit verify: --jwks: %w", err)
				}
				opts.VerifyFunc = f
			}
			rep, err := verifyFiles(e, files, opts)
			if rep == nil {
				return err
			}
			// An error other than ErrTampered stopped the reading: the
			// report covers only the lines read before it.
			var readErr error
			if err != nil && !errors.Is(err, audit.ErrTampered) {
				readErr = err
			}
			rep.Problems = append(rep.Problems, journalProblems(args)...)
			if !asJSON && len(args) > 1 {
				fmt.Fprintf(e.stdout, "files, in order: %s\n", strings.Join(args, ", "))
			}
			if asJSON {
				enc := json.NewEncoder(e.stdout)
				enc.SetIndent("", "  ")
				_ = enc.Encode(rep)
				for _, w := range unsignedWarnings(rep) {
					fmt.Fprintf(e.stderr, "keytrail: warning: %s\n", w)
				}
				for _, w := range resumedWarnings(rep) {
					fmt.Fprintf(e.stderr, "keytrail: warning: %s\n", w)
				}
				for _, n := range resumedNotices(rep) {
					fmt.Fprintf(e.stderr, "keytrail: notice: %s\n", n)
				}
				// The problems name the unknown key only: where to find
				// it (a rotated-out or changed key) is said here.
				if hint := unknownKeyHint(rep, opts); hint != "" {
					fmt.Fprintf(e.stderr, "keytrail: hint: %s\n", hint)
				}
			} else {
				printVerifyReport(e, rep, readErr, opts)
			}
			switch {
			case readErr != nil:
				return fmt.Errorf("audit log not verified: %w", readErr)
			case err != nil || !rep.OK():
				return exitError{code: 1, msg: "audit log does NOT verify"}
			}
			return nil
		},
	}
	c.Flags().StringSliceVar(&keyFiles, "key", nil, "Ed25519 checkpoint public key (PEM); repeatable")
	c.Flags().StringSliceVar(&jwksSrcs, "jwks", nil, "JWKS with the Vault transit checkpoint keys (URL, file, pipe, or - for stdin); repeatable")
	c.Flags().BoolVar(&requireCheckpoint, "require-checkpoint", false, "fail when lines follow the last verified checkpoint")
	c.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	c.Flags().BoolVar(&exact, "exact", false, "read only the files named, without rotated siblings or directory expansion")
	c.Flags().BoolVar(&allowTrimmed, "allow-trimmed-start", false, "accept chains whose oldest files were removed (retention): verify each from its first line present")
	c.Flags().StringArrayVar(&expectSeqs, "expect-seq", nil, "SEQ or CHAIN=SEQ: fail when the chain ends before this seq (e.g. the highest keytrail_audit_last_seq seen); repeatable")
	return c
}

// parseExpectSeq reads --expect-seq values: SEQ (for the only chain of the
// files) or CHAIN=SEQ, SEQ a positive decimal number. The chain is what
// comes before the last "=" (a chain id may contain one).
func parseExpectSeq(vals []string) (map[string]uint64, error) {
	out := map[string]uint64{}
	for _, v := range vals {
		chain, num := "", v
		if i := strings.LastIndexByte(v, '='); i >= 0 {
			chain, num = v[:i], v[i+1:]
			if err := audit.ValidChainID(chain); err != nil {
				return nil, fmt.Errorf("--expect-seq %q: %v", v, err)
			}
		}
		n, err := strconv.ParseUint(num, 10, 64)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("--expect-seq %q: want SEQ or CHAIN=SEQ, SEQ a positive whole number", v)
		}
		if _, dup := out[chain]; dup {
			return nil, fmt.Errorf("--expect-seq %q: a seq for this chain is already given", v)
		}
		out[chain] = n
	}
	return out, nil
}

// auditFiles are the audit files a command reads, in order, identified
// before any is read (listed, then each opened, fstat'ed and closed) and
// opened again one at a time when its turn comes (open): holding them all
// open from the start, as trace, report and audit verify did, took one
// descriptor per file, and a long retention (thousands of rotated files)
// ran into RLIMIT_NOFILE (1,024 by default) and failed the whole command
// with "too many open files".
type auditFiles struct {
	paths []string
	infos []os.FileInfo                            // each file as identified
	live  []bool                                   // a running sink held the path when it was identified
	wrap  func(path string, f *os.File) audit.File // env.wrapAuditRead
}

// identifyAuditFiles lists the audit files args name (as named, with exact)
// and identifies each (os.SameFile). A running broker can rotate its file
// between the listing and the identifying: the path then names a new file
// (or, for a moment, none) and the renamed one is not in the list, which
// verify would report as a seq gap. So once the files are identified they
// are listed again, and when the listing changed or a path no longer names
// the file identified under it, it starts over, once: a second race is
// reported as what it looks like (a broker does not rotate twice in a few
// milliseconds). A listed rotated file, not named as such in args, that no
// longer exists when it is identified was deleted by retention (a rotated
// file is not renamed again): it is left out, as a listing made after the
// deletion leaves it out, without starting over (retention deleting the
// oldest files one by one did that at every listing, and failed the command
// at the second). The files named with exact are taken as they are. A file
// that cannot be opened fails here, before any is read.
func identifyAuditFiles(e *env, args []string, exact bool) (*auditFiles, error) {
	list := func() ([]string, error) {
		if exact {
			return trace.UniqueFiles(args), nil
		}
		return trace.LogFiles(args)
	}
	var deleted func(p string) bool // a listed file that may be left out when gone
	if !exact {
		named := map[string]bool{}
		for _, a := range args {
			named[filepath.Clean(a)] = true
		}
		deleted = func(p string) bool {
			_, rotated := trace.IsRotated(filepath.Base(p))
			return rotated && !named[filepath.Clean(p)]
		}
	}
	for retry := !exact; ; retry = false {
		paths, err := list()
		if err != nil {
			return nil, err
		}
		if e.afterAuditList != nil {
			e.afterAuditList()
		}
		paths, infos, live, err := identifyAll(paths, deleted)
		if err == nil && len(paths) == 0 {
			err = fmt.Errorf("no audit files left in %s: the rotated files listed were deleted meanwhile", strings.Join(args, ", "))
		}
		switch {
		case err != nil && retry && errors.Is(err, fs.ErrNotExist):
			continue // renamed away meanwhile
		case err != nil:
			return nil, err
		case !retry || sameListing(list, paths, infos):
			return &auditFiles{paths: paths, infos: infos, live: live, wrap: e.wrapAuditRead}, nil
		}
	}
}

// identifyAll opens each of paths in turn (so that one that cannot be read
// fails now, not after minutes of reading the others) and returns the
// paths kept, what fstat says of each, and whether a running sink holds it
// (auditfile.Locked); one descriptor at a time. A path that no longer
// exists and that deleted (when not nil) says may have been deleted is
// left out.
func identifyAll(paths []string, deleted func(string) bool) ([]string, []os.FileInfo, []bool, error) {
	kept := make([]string, 0, len(paths))
	infos := make([]os.FileInfo, 0, len(paths))
	live := make([]bool, 0, len(paths))
	for _, p := range paths {
		f, err := os.Open(p)
		if errors.Is(err, fs.ErrNotExist) && deleted != nil && deleted(p) {
			continue
		}
		if err != nil {
			return nil, nil, nil, err
		}
		fi, err := f.Stat()
		_ = f.Close()
		if err != nil {
			return nil, nil, nil, err
		}
		kept = append(kept, p)
		infos = append(infos, fi)
		live = append(live, auditfile.Locked(p))
	}
	return kept, infos, live, nil
}

// sameListing reports whether list still returns paths, each naming the
// file identified under it.
func sameListing(list func() ([]string, error), paths []string, infos []os.FileInfo) bool {
	again, err := list()
	if err != nil || !slices.Equal(again, paths) {
		return false
	}
	for i, p := range paths {
		now, err := os.Stat(p)
		if err != nil || !os.SameFile(now, infos[i]) {
			return false
		}
	}
	return true
}

// size is the total size of the files as identified.
func (s *auditFiles) size() int64 {
	var n int64
	for _, fi := range s.infos {
		n += fi.Size()
	}
	return n
}

// open opens the i-th file: the one identified under its path, which a
// running broker may have renamed since (a rotation while the older files
// were read): its path then names the new live file, whose lines follow
// the ones this read covers, and the file identified is found among the
// path's rotated siblings. The file must be the one identified (same device
// and inode) and, unless a running sink holds its path, no shorter: the
// durable lines of an audit file only grow, so a shorter file no sink holds
// was truncated, or is a new file that reuses a removed one's inode. A
// running sink does cut its live file short, of the bytes after its last
// durable line (a failed or torn write: rollback, reopen, a crash's torn
// line at start-up), which the file may have ended in when identified: held
// by a sink then or now (one that started meanwhile drops a crash's torn
// line), the file is read as it is, also when a rotation renamed it after
// the cut; the read is then what a run started now would read. A file
// removed meanwhile (retention) is an error rather than a seq gap the chain
// check would report as lines removed. The caller closes the file.
func (s *auditFiles) open(i int) (*os.File, error) {
	p, want := s.paths[i], s.infos[i]
	shorter := s.live[i] || auditfile.Locked(p)
	try := func(name string) (*os.File, error) {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		if fi, err := f.Stat(); err == nil && os.SameFile(fi, want) && (shorter || fi.Size() >= want.Size()) {
			return f, nil
		}
		_ = f.Close()
		return nil, nil
	}
	f, err := try(p)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err // not a rotation: unreadable now
	}
	if f == nil {
		if _, rotated := trace.IsRotated(filepath.Base(p)); !rotated {
			sib, _ := trace.RotatedSiblings(p)
			for j := len(sib) - 1; j >= 0 && f == nil; j-- { // newest first: a rename of late
				if fi, err := os.Stat(sib[j]); err == nil && os.SameFile(fi, want) {
					f, _ = try(sib[j])
				}
			}
		}
	}
	if f == nil {
		return nil, errors.New("no longer the file that was there when the reading began (removed, replaced or truncated meanwhile, and not among its rotated files): run the command again")
	}
	return f, nil
}

// lines returns the lines of f, the i-th file, as an audit.LineReader
// hands them out: a running broker's file is read while it writes, and a
// plain reader that has read part of a line (a write in progress, or a
// torn one the sink then cuts back) joins it to whatever the sink writes
// at its offset next, one line the broker never wrote (for audit verify a
// chain problem: "do NOT verify"). A file cut back below lines already
// read fails the reading (audit.ErrCutBelowRead: run the command again).
func (s *auditFiles) lines(i int, f *os.File) *audit.LineReader {
	var src audit.File = f
	if s.wrap != nil {
		src = s.wrap(s.paths[i], f)
	}
	return audit.NewLineReader(src, 0)
}

// input is the i-th file as an audit.Input whose reader opens the file at
// its first read and closes it at the end (EOF or an error); release
// closes it if the reading stopped before. It reads the file's lines
// through lines.
func (s *auditFiles) input(i int) (audit.Input, func()) {
	r := &lazyFile{s: s, i: i}
	return audit.Input{Name: s.paths[i], R: r, Live: auditfile.Locked(s.paths[i])}, r.release
}

type lazyFile struct {
	s    *auditFiles
	i    int
	f    *os.File
	r    *audit.LineReader // of f
	done bool
	// openErr or readErr is the error that stopped the reading, if any
	// (not io.EOF).
	openErr, readErr error
}

func (l *lazyFile) Read(b []byte) (int, error) {
	if l.done {
		return 0, io.EOF
	}
	if l.f == nil {
		f, err := l.s.open(l.i)
		if err != nil {
			l.done, l.openErr = true, err
			return 0, err
		}
		l.f, l.r = f, l.s.lines(l.i, f)
	}
	n, err := l.r.Read(b)
	if err != nil {
		if !errors.Is(err, io.EOF) {
			l.readErr = err
		}
		l.release()
	}
	return n, err
}

func (l *lazyFile) release() {
	l.done = true
	if l.f != nil {
		_ = l.f.Close()
		l.f, l.r = nil, nil
	}
}

// verifyFiles is audit.Verify over the files, each opened in its turn
// (auditFiles.open), with a progress line on stderr every e.progressEvery
// while they are read: a log of a few GiB takes minutes. A file a running
// sink holds (auditfile.Locked) is live: its incomplete last line is a
// batch being written, not a problem.
func verifyFiles(e *env, files *auditFiles, opts audit.VerifyOptions) (*audit.Report, error) {
	pr := &progress{w: e.stderr, what: "keytrail audit verify", total: files.size(), every: e.progressEvery, last: time.Now()}
	inputs := make([]audit.Input, 0, len(files.paths))
	for i, p := range files.paths {
		in, release := files.input(i)
		defer release()
		in.R = progressReader{r: in.R, p: pr, name: p}
		inputs = append(inputs, in)
	}
	return audit.Verify(inputs, opts)
}

// loadAuditFiles is trace.LoadFiles with the progress lines of verifyFiles
// (what is the command, for them): an offline trace or report over a large
// log spends minutes reading it. The files args name (with their rotated
// siblings, as for audit verify) are all identified before any is read, as
// audit verify identifies them, and each is opened in its turn as the one
// identified (auditFiles.open): a running broker that rotates its file
// while the older files are read renames the file it was writing, and the
// path, opened only then, would name the new one, leaving out the renamed
// file's lines (a seq gap the chain check would report as lines removed).
// One file is open at a time, however many there are. With check, the
// files are read by audit.Verify, which hands each line it decodes to x
// too (VerifyOptions.Parsed): one reading and one decoding of each line
// for both. The report it returns says whether the hash chain holds (not
// the checkpoint signatures: no key is given). A chain that starts after
// seq 1 in the files (retention removed its oldest files) is checked from
// its first line, as audit verify --allow-trimmed-start does: trimmedNotes
// says so, and it is not a problem (a gap after that line, or a line whose
// prev does not match, still is). A file a running broker holds is live,
// as for audit verify.
func loadAuditFiles(e *env, what string, x *trace.Index, args []string, check bool) (*audit.Report, error) {
	files, err := identifyAuditFiles(e, args, false)
	if err != nil {
		return nil, err
	}
	paths := files.paths
	pr := &progress{w: e.stderr, what: what, total: files.size(), every: e.progressEvery, last: time.Now()}
	if !check {
		for i, p := range paths {
			if err := consumeAuditFile(x, pr, files, i); err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
		}
		return nil, nil
	}
	lazy := make([]*lazyFile, len(paths))
	inputs := make([]audit.Input, len(paths))
	for i, p := range paths {
		lazy[i] = &lazyFile{s: files, i: i}
		defer lazy[i].release()
		inputs[i] = audit.Input{Name: p, R: progressReader{r: lazy[i], p: pr, name: p}, Live: auditfile.Locked(p)}
	}
	rep, err := audit.Verify(inputs, audit.VerifyOptions{Parsed: x.AddParsed, AllowTrimmedStart: true})
	for i, l := range lazy {
		// The errors as trace.Index.Consume, which read them before,
		// returned them.
		switch {
		case l.openErr != nil:
			return nil, fmt.Errorf("%s: %w", paths[i], l.openErr)
		case l.readErr != nil:
			return nil, fmt.Errorf("%s: trace: read audit log: %w", paths[i], l.readErr)
		}
	}
	if err != nil && !errors.Is(err, audit.ErrTampered) {
		return nil, err
	}
	return rep, nil
}

// consumeAuditFile opens the i-th of files, adds its lines (auditFiles.lines)
// to x and closes it.
func consumeAuditFile(x *trace.Index, pr *progress, files *auditFiles, i int) error {
	f, err := files.open(i)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = x.Consume(progressReader{r: files.lines(i, f), p: pr, name: files.paths[i]})
	return err
}

// chainNote says, when the hash chain check of an offline trace or report
// (loadAuditFiles with check) found problems, that the answer rests on
// lines that may have been altered; "" when it found none.
func chainNote(rep *audit.Report) string {
	if rep == nil || rep.OK() {
		return ""
	}
	n := len(rep.Problems) + rep.ProblemsOmitted
	return fmt.Sprintf("the audit files do NOT verify: %d problem(s), the first at %s; lines may have been changed, inserted or removed, and what is shown rests on the lines as they are (keytrail audit verify names each problem, and checks the checkpoint signatures with --key or --jwks)", n, rep.Problems[0])
}

// trimmedNotes say, for each chain that starts after seq 1 in the files an
// offline trace or report checked (loadAuditFiles), that the lines before
// it are not in them: retention removes the oldest files, and the files
// cannot tell that from lines removed otherwise, so what those lines
// recorded is not covered. This is a note, not a verification failure: the
// chain is checked from its first line present, whose prev (the hash of
// the line before it) a later checkpoint signs with the rest.
func trimmedNotes(rep *audit.Report) []string {
	if rep == nil {
		return nil
	}
	var notes []string
	for _, c := range rep.Chains {
		if !c.TrimmedStart {
			continue
		}
		before := "seq 1"
		if c.FirstSeq > 2 {
			before = fmt.Sprintf("seq 1..%d", c.FirstSeq-1)
		}
		notes = append(notes, fmt.Sprintf("chain %s starts at seq %d in the audit files: %s are not in them (retention removes a log's oldest files; the files cannot tell whether it removed these), so nothing they recorded is covered; the chain is checked from seq %d (keytrail audit verify --allow-trimmed-start checks the checkpoint signatures too, with --key or --jwks)", c.Chain, c.FirstSeq, before, c.FirstSeq))
	}
	return notes
}

// exitNotVerified is the exit status of an offline trace or report run
// with --require-verified whose audit files do not verify: the answer (or
// "no issuance matches"), or the report, was written, but it rests on
// lines that may have been changed, inserted or removed. It is not 1, which
// a trace also returns when nothing matches and both return on an error, so
// that a script can tell a tampered log from an answer.
const exitNotVerified = 3

// requireVerified is what an offline trace or report run with
// --require-verified returns once its answer is written (err: what the
// command returns otherwise): exitNotVerified when the hash chain check
// found problems (chainNote has warned of them on stderr already), also
// when err is trace's "no issuance matches" (notFound: an issuance whose
// lines were removed is not found either, so over files that do not verify
// that answer is as unsure as any other; the not-found line is printed
// first). Any other err (the answer could not be written, a file or the
// server could not be read) comes first: nothing was answered.
func requireVerified(e *env, what string, rep *audit.Report, err error, notFound bool) error {
	if chainNote(rep) == "" || err != nil && !notFound {
		return err
	}
	if notFound {
		var ee exitError
		if errors.As(err, &ee) {
			fmt.Fprintln(e.stderr, "keytrail:", ee.msg)
		}
	}
	n := len(rep.Problems) + rep.ProblemsOmitted
	return exitError{code: exitNotVerified, msg: fmt.Sprintf("%s: --require-verified: the audit files do NOT verify: %d problem(s), the first at %s", what, n, rep.Problems[0])}
}

// skippedNote says that n audit lines could not be read and were left out
// of an offline trace or report, and where to find them.
func skippedNote(n int64) string {
	return fmt.Sprintf("%d audit line(s) are not well-formed events and were left out (keytrail audit verify names each by file and line)", n)
}

// progress prints "<what>: <file>: 512 MiB of 1.7 GiB read" at most once
// every every (never before the first every has passed, so a small job
// prints nothing).
type progress struct {
	w     io.Writer
	what  string
	total int64
	done  int64
	every time.Duration
	last  time.Time
}

func (p *progress) add(name string, n int) {
	p.done += int64(n)
	if now := time.Now(); now.Sub(p.last) >= p.every {
		p.last = now
		fmt.Fprintf(p.w, "%s: %s: %s of %s read\n", p.what, name, byteSize(p.done), byteSize(p.total))
	}
}

type progressReader struct {
	r    io.Reader
	p    *progress
	name string
}

func (r progressReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	r.p.add(r.name, n)
	return n, err
}

// byteSize is n in B, KiB, MiB or GiB with one decimal.
func byteSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// printVerifyReport prints rep; readErr, when not nil, stopped the reading
// before the last line of the last file.
func printVerifyReport(e *env, rep *audit.Report, readErr error, opts audit.VerifyOptions) {
	w := e.stdout
	fmt.Fprintf(w, "%d file(s), %d line(s), %d chain(s)\n", rep.Files, rep.Lines, len(rep.Chains))
	var trimmed []string
	for _, c := range rep.Chains {
		fmt.Fprintf(w, "chain %s: %d lines, seq %d..%d, last line at %s, %d verified checkpoint(s)", c.Chain, c.Lines, c.FirstSeq, c.LastSeq, c.LastTime, c.Checkpoints)
		switch {
		case c.SignedTime != "" && c.SignedSeq < c.LastCheckpointSeq:
			// A version 1 checkpoint line's own time is not signed.
			fmt.Fprintf(w, ", signed up to seq %d at %s (the last checkpoint, of version 1, does not sign its own time and request_id)", c.SignedSeq, c.SignedTime)
		case c.SignedTime != "":
			fmt.Fprintf(w, ", signed up to seq %d at %s", c.SignedSeq, c.SignedTime)
		}
		if c.TrimmedStart && opts.AllowTrimmedStart {
			fmt.Fprintf(w, ", verified from seq %d (seq 1..%d are not in the files: removed, by retention)", c.FirstSeq, c.FirstSeq-1)
		} else if c.TrimmedStart {
			trimmed = append(trimmed, c.Chain)
		}
		if c.UnsignedTail > 0 {
			fmt.Fprintf(w, ", %d line(s) after the last verified checkpoint (no signature covers them: they may have been added or changed, and lines after them removed, unseen)", c.UnsignedTail)
		}
		fmt.Fprintln(w)
	}
	if len(trimmed) > 0 {
		fmt.Fprintf(w, "hint: chain(s) %s start after seq 1 in the files: if their oldest files were removed on purpose (retention), verify again with --allow-trimmed-start\n", strings.Join(trimmed, ", "))
	}
	for _, n := range resumedNotices(rep) {
		fmt.Fprintln(w, "notice:", n)
	}
	for _, s := range resumedWarnings(rep) {
		fmt.Fprintln(w, "WARNING:", s)
	}
	warnings := unsignedWarnings(rep)
	for _, s := range warnings {
		fmt.Fprintln(w, "WARNING:", s)
	}
	if hint := unknownKeyHint(rep, opts); hint != "" {
		fmt.Fprintln(w, "hint:", hint)
	}
	for _, p := range rep.BeingWritten {
		fmt.Fprintf(w, "%s:%d: being written by the running broker (incomplete last line, %d bytes so far): not verified yet, verify again to check it\n", p.File, p.Line, p.Bytes)
	}
	for _, p := range rep.Problems {
		fmt.Fprintln(w, "FAIL", p.String())
	}
	if rep.ProblemsOmitted > 0 {
		fmt.Fprintf(w, "... and %d more problem(s)\n", rep.ProblemsOmitted)
	}
	switch {
	case readErr != nil:
		fmt.Fprintln(w, "NOT VERIFIED: a file could not be read to its end (see the error): it and the files after it were not verified")
	case rep.OK() && rep.Lines == 0:
		fmt.Fprintln(w, "NOTHING VERIFIED: no audit lines (a broker writes at least its policy_load event when it starts; --require-checkpoint makes this a failure)")
	case rep.OK():
		if len(warnings) > 0 {
			fmt.Fprintln(w, "OK: the chain is intact up to its last line (seq above), but NOT SIGNED (see the WARNING above): a file rewritten whole passes this")
		} else {
			fmt.Fprintln(w, "OK: the chain is intact up to its last line (seq above)")
		}
		for _, chain := range slices.Sorted(maps.Keys(opts.ExpectSeq)) {
			name := chain
			if name == "" {
				name = rep.Chains[0].Chain
			}
			fmt.Fprintf(w, "chain %s reaches seq %d, as expected (--expect-seq)\n", name, opts.ExpectSeq[chain])
			if chain == "" {
				fmt.Fprintf(w, "note: --expect-seq %d names no chain: it was checked against the only chain in the files, whatever its id; give CHAIN=SEQ (the chain keytrail_audit_chain_info names) to check the id too\n", opts.ExpectSeq[chain])
			}
		}
		fmt.Fprintln(w, "note: lines removed from the end up to a checkpoint, or the newest files removed whole, leave no trace in the files: compare each chain's last seq and time with a copy kept elsewhere (a log shipper's, a backup, or the highest keytrail_audit_last_seq monitoring saw, with --expect-seq)")
	}
}

// seqSpan names the lines first..last of a chain: "seq 5..9", or "seq 5"
// for one line.
func seqSpan(first, last uint64) string {
	if first == last {
		return fmt.Sprintf("seq %d", first)
	}
	return fmt.Sprintf("seq %d..%d", first, last)
}

// resumedNotices name, per chain, the lines that no checkpoint covered
// when a broker restarted (its start event records them,
// audit.ChainReport.UnsignedResumed): the checkpoints after the restart
// sign them, so the files cannot tell them from lines the broker wrote. A
// crash leaves such lines legitimately: a notice, not a failure.
func resumedNotices(rep *audit.Report) []string {
	var out []string
	for _, c := range rep.Chains {
		for _, r := range c.UnsignedResumed {
			seqs := seqSpan(r.FirstSeq, r.LastSeq)
			after := fmt.Sprintf("after the checkpoint at seq %d", r.LastCheckpointSeq)
			if r.LastCheckpointSeq == 0 {
				// After a deliberate change of checkpoint key the broker
				// counts the old key's checkpoints among them too (it
				// cannot check them), and past 100 lines typed checkpoint
				// that did not verify it checks none (its own too:
				// auditfile maxFailedChecks): say so, not only a crash
				// or a forger.
				after = "with no checkpoint the broker could check as its own before them in its file (after a change of checkpoint key the old key's checkpoints are among them, an over-report; so are its own when more than 100 lines typed checkpoint after them did not verify at that start, as it then stops checking; a broker before this version counted at most 1,000 lines)"
			}
			if r.VerifiedCheckpointSeq != 0 {
				after += fmt.Sprintf("; the checkpoint at seq %d among them verified with key %s, which the broker did not check as its own (a change of checkpoint key: the lines before it are signed by that key; or its own, when more than 100 lines typed checkpoint after it did not verify at that start, forged lines each a problem, and the broker stopped checking)", r.VerifiedCheckpointSeq, r.VerifiedCheckpointKeyID)
			}
			out = append(out, fmt.Sprintf("chain %s: %s (%d line(s)), %s, were signed only after the broker restarted (its start event, seq %d, records them): an unclean stop leaves such lines, and so does whoever added lines to the file while no broker held it; nothing in the files tells which", c.Chain, seqs, r.Lines, after, r.AtSeq))
		}
		if c.UnsignedResumedOmitted > 0 {
			out = append(out, fmt.Sprintf("chain %s: %d more start event(s) record lines signed only after a restart (--json lists the first %d)", c.Chain, c.UnsignedResumedOmitted, len(c.UnsignedResumed)))
		}
	}
	return out
}

// resumedWarnings names the lines verify found that no verified
// checkpoint covered before a broker's start event and that its record
// (audit.DetailUnsignedResumed) leaves out (audit.ChainReport.
// UnrecordedResumed): a broker before the record wrote none, one before
// the whole range was recorded cut it at 1,000 lines. A warning, not a
// failure: a record that names a checkpoint and still leaves lines out is
// a problem (verify's).
func resumedWarnings(rep *audit.Report) []string {
	var out []string
	for _, c := range rep.Chains {
		for _, r := range c.UnrecordedResumed {
			seqs := seqSpan(r.FirstSeq, r.LastSeq)
			after := fmt.Sprintf("after the checkpoint at seq %d", r.LastCheckpointSeq)
			if r.LastCheckpointSeq == 0 {
				after = "with no verified checkpoint before them"
			}
			out = append(out, fmt.Sprintf("chain %s: %s (%d line(s)), %s, are covered by no verified checkpoint before the start event at seq %d, which does not record them: its broker signed them as its own after it restarted. A broker before this record (or, for the first lines of a range, one that recorded at most 1,000) leaves such lines after an unclean stop, and so does whoever added lines to the file while no broker held it; nothing in the files tells which", c.Chain, seqs, r.Lines, after, r.AtSeq))
		}
		if c.UnrecordedResumedOmitted > 0 {
			out = append(out, fmt.Sprintf("chain %s: %d more start event(s) follow lines no verified checkpoint covers that they do not record (--json lists the first %d)", c.Chain, c.UnrecordedResumedOmitted, len(c.UnrecordedResumed)))
		}
	}
	return out
}

// unsignedWarnings says why a log that verifies may still have been
// rewritten whole, its hash chain recomputed: no key was given, or a chain
// has no verified checkpoint at all. A broker signs a checkpoint at least
// every 1,000 events or 60 s, and when it stops, so such a chain is a
// broker's first minute, one whose signing failed throughout, or not a
// broker's (--require-checkpoint makes it a failure).
func unsignedWarnings(rep *audit.Report) []string {
	if rep.Lines == 0 {
		return nil
	}
	if !rep.SignaturesChecked {
		return []string{"checkpoint signatures not checked (no --key or --jwks given): whoever can write the files can rewrite them whole, recomputing the hash chain, and they verify just the same"}
	}
	var out []string
	for _, c := range rep.Chains {
		if c.Checkpoints == 0 && c.Lines > 0 {
			out = append(out, fmt.Sprintf("chain %s has no verified checkpoint: no signature covers any of its %d line(s), so whoever can write the files could have written all of them, hash chain included. A broker signs a checkpoint at least every 1,000 events or 60 s and when it stops: a chain without one is a broker's first minute, one whose checkpoints all failed (the broker logs each), or not a broker's; --require-checkpoint makes this a failure", c.Chain, c.Lines))
		}
	}
	return out
}

// unknownKeyHint says, when checkpoints name keys none of those given
// has, where such a key is found; "" when none does.
func unknownKeyHint(rep *audit.Report, opts audit.VerifyOptions) string {
	const prefix = "checkpoint from unknown key "
	var kids []string
	for _, p := range rep.Problems {
		if kid, ok := strings.CutPrefix(p.Why, prefix); ok {
			if k, err := strconv.Unquote(kid); err == nil && !slices.Contains(kids, k) {
				kids = append(kids, k)
			}
		}
	}
	if len(kids) == 0 {
		return ""
	}
	where := "its public key with another --key (Ed25519 key ids are ed25519:<hex>), or a JWKS that has it with --jwks (transit key ids are <key>:<version>)"
	if opts.VerifyFunc != nil {
		where = "a JWKS saved while the broker served the key (--jwks is repeatable), or its public key with --key"
	}
	return fmt.Sprintf("no key given has checkpoint key(s) %s: a key the broker no longer serves (audit.checkpoint_transit_key or checkpoint_key_file changed, a transit version below min_decryption_version), or another instance's: give %s", strings.Join(kids, ", "), where)
}

// journalProblems reports, for each audit file, acknowledged batches that
// its journal holds and the file lacks (an unclean stop, not yet replayed),
// and a journal that does not continue its file.
func journalProblems(files []string) []audit.Problem {
	var out []audit.Problem
	for _, f := range files {
		u, err := auditfile.CheckJournal(f)
		switch {
		case err != nil:
			// The problem is the journal's, not a line's: name the
			// journal, its audit file and what is wrong.
			why := strings.TrimPrefix(err.Error(), "journal "+u.Journal+": ")
			out = append(out, audit.Problem{File: u.Journal, Why: fmt.Sprintf("the journal of %s cannot be compared with it: %s", f, why)})
		case u.Batches > 0:
			out = append(out, audit.Problem{File: f, Line: u.Line, Why: fmt.Sprintf(
				"%d acknowledged batch(es) (%d bytes) are in the journal %s but not in the file: the broker stopped uncleanly and has not started since; start it (it writes them back into the file at start-up), then verify again",
				u.Batches, u.Bytes, u.Journal)})
		}
	}
	return out
}
