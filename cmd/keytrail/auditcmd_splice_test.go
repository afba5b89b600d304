package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
)

// hookedRead is an audit file whose reads (Read or ReadAt) call after(n)
// once the n-th returns.
type hookedRead struct {
	f     *os.File
	n     int
	after func(n int)
}

func (h *hookedRead) Read(b []byte) (int, error) {
	n, err := h.f.Read(b)
	h.n++
	h.after(h.n)
	return n, err
}

func (h *hookedRead) ReadAt(b []byte, off int64) (int, error) {
	n, err := h.f.ReadAt(b, off)
	h.n++
	h.after(h.n)
	return n, err
}

// TestAuditFilesTornTailCutWhileReading: trace, report and audit verify of
// a running broker's audit file read it while the broker writes. Having
// read the file up to a torn write at its end (part of a line), they read
// on; when the broker had meanwhile cut the torn bytes off (its rollback)
// and written its next events, which grow the file past what was read,
// the next read started in the middle of a new line, and the part read
// before was joined to it into one line the broker never wrote: audit
// verify failed ("incomplete ..."/a broken chain: "do NOT verify"), trace
// and report warned the same. The part is now read again from its start
// (audit.LineReader). And when lines already read are cut (a batch read
// before its write failed), the command fails saying the file was cut back
// below them: run it again.
func TestAuditFilesTornTailCutWhileReading(t *testing.T) {
	issID := func(n int) string { return fmt.Sprintf("iss_01JXSPL00000000000000%03d", n) }
	torn := []byte(`{"v":1,"chain":"chn_torn","seq":4,"time":"2026-`)
	for _, cmd := range auditFileReaders(issID(1)) {
		for _, c := range []struct {
			name string
			cut  bool // the cut goes below lines read: the torn write and event 3
		}{
			{"torn-tail", false},
			{"below-lines-read", true},
		} {
			t.Run(cmd[0]+"/"+c.name, func(t *testing.T) {
				dir := t.TempDir()
				s, path, add := issueSink(t, dir, 0, issID)
				add(1)
				add(2)
				durable, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				if c.cut {
					// Event 3, read, then cut with the torn write.
					add(3)
				}
				appendBytes(t, path, torn)
				hooked := false
				var out, errb bytes.Buffer
				e := &env{ctx: context.Background(), getenv: func(string) string { return "" }, stdout: &out, stderr: &errb,
					progressEvery: time.Hour,
					wrapAuditRead: func(p string, f *os.File) audit.File {
						return &hookedRead{f: f, after: func(n int) {
							if n != 1 || p != path || hooked {
								return
							}
							hooked = true
							// After the first read: the sink's rollback,
							// then events that grow the file past it.
							if err := os.Truncate(path, durable.Size()); err != nil {
								t.Error(err)
							}
							add := add
							if c.cut {
								// Event 3 was acknowledged: a running sink
								// takes a cut below it for a truncation
								// underneath and writes no more; one
								// started on the cut file writes on.
								_ = s.Close()
								_, _, add = issueSink(t, dir, 0, issID)
							}
							for i := 4; i <= 6; i++ {
								add(i)
							}
						}}
					}}
				root := newRootCmd(e)
				root.SetArgs(withAuditLog(cmd, path))
				root.SetOut(&out)
				root.SetErr(&errb)
				err = root.ExecuteContext(context.Background())
				if !hooked {
					t.Fatal("fixture: the file was not read through the hook")
				}
				if c.cut {
					var ee exitError
					if err == nil || errors.As(err, &ee) && ee.code != 1 || !strings.Contains(err.Error(), path+": ") ||
						!strings.Contains(err.Error(), "cut back below the lines already read") || !strings.Contains(err.Error(), "run the command again") {
						t.Errorf("%s with lines read cut off the live file = %v\nstdout:\n%s\nstderr:\n%s\nwant exit 1 naming it: cut back below the lines already read, run the command again", cmd[0], err, out.String(), errb.String())
					}
					return
				}
				if err != nil || strings.Contains(errb.String(), "do NOT verify") || strings.Contains(out.String(), "FAIL") {
					t.Errorf("%s with the torn write cut off the live file and new events written while reading = %v\nstdout:\n%s\nstderr:\n%s\nwant success and no chain problem", cmd[0], err, out.String(), errb.String())
				}
				if cmd[0] == "audit" && !strings.Contains(out.String(), "OK: the chain is intact") {
					t.Errorf("audit verify:\n%s\nwant OK", out.String())
				}
			})
		}
	}
}
