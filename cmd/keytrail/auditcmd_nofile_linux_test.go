package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// nofileEnv, set in a child of the test binary (benchChildEnv runs the CLI
// in it), is the RLIMIT_NOFILE soft limit the child sets before main runs.
const nofileEnv = "KEYTRAIL_TEST_RLIMIT_NOFILE"

func init() {
	v := os.Getenv(nofileEnv)
	if v == "" {
		return
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		panic(err)
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		panic(err)
	}
	lim.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		panic(err)
	}
}

// TestAuditFilesBeyondTheOpenFileLimit: trace, report and audit verify
// opened every audit file (the live one and all its rotated siblings)
// before reading any, one descriptor per file: with more rotated files than
// RLIMIT_NOFILE allows (a long retention; the soft limit is 1,024 by
// default) they failed whole with "too many open files". They now identify
// the files first and hold one open at a time. The CLI runs in a child of
// the test binary whose limit is 64, over 150 files: each must read them
// all (the issuance is in the oldest file) and find the chain intact.
func TestAuditFilesBeyondTheOpenFileLimit(t *testing.T) {
	const files, limit = 150, 64
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	const issID = "iss_01JXNOFILE0000000000000001"
	t0 := time.Now().Add(-time.Hour).UTC()
	c := audit.NewChain("chn_nofile")
	var live string
	for i := range files {
		ev := &audit.Event{Type: audit.TypeUse, RequestID: fmt.Sprintf("req_%d", i), IssuanceID: issID, Workload: "payments-api",
			Owner: "team-payments", UseID: fmt.Sprintf("use_%d", i), Outcome: &audit.Outcome{Status: 200}}
		if i == 0 {
			ev = &audit.Event{Type: audit.TypeIssue, RequestID: "req_0", IssuanceID: issID, Workload: "payments-api", Owner: "team-payments",
				Grant: "payments-vault", Kind: broker.KindVaultToken, Identity: &audit.Identity{Iss: "https://issuer.test", Sub: "api"},
				Outcome: &audit.Outcome{Status: 200}}
		}
		at := t0.Add(time.Duration(i) * time.Second)
		l, err := c.Seal(ev, at)
		if err != nil {
			t.Fatal(err)
		}
		name := "audit.jsonl." + at.Format(trace.RotatedLayout)
		if i == files-1 {
			name = "audit.jsonl"
		}
		live = writeFile(t, dir, name, string(l)+"\n")
	}

	for _, tc := range []struct {
		args []string
		want string // in stdout
	}{
		{[]string{"trace", issID, "--audit-log", live}, "use_1"},
		{[]string{"report", "--audit-log", dir, "--format", "json"}, "payments-api"},
		{[]string{"audit", "verify", live}, fmt.Sprintf("%d file(s), %d line(s), 1 chain(s)", files, files)},
	} {
		t.Run(tc.args[0], func(t *testing.T) {
			cmd := exec.Command(self, tc.args...)
			cmd.Env = append(os.Environ(), benchChildEnv+"=1", nofileEnv+"="+strconv.Itoa(limit))
			var out, errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errb
			err := cmd.Run()
			var ee *exec.ExitError
			if err != nil && !errors.As(err, &ee) {
				t.Fatal(err)
			}
			if err != nil || !strings.Contains(out.String(), tc.want) || strings.Contains(errb.String(), "do NOT verify") || strings.Contains(out.String(), "FAIL") {
				t.Errorf("keytrail %s over %d audit files with RLIMIT_NOFILE %d = %v\nstdout:\n%s\nstderr:\n%s\nwant success, %q, the chain intact",
					strings.Join(tc.args, " "), files, limit, err, out.String(), errb.String(), tc.want)
			}
		})
	}
}
