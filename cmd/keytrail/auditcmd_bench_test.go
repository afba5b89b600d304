package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// benchAuditFile writes an audit file of n events of one chain (issue,
// use, use_result in turn, as a proxy grant logs them) and returns its
// path.
func benchAuditFile(b *testing.B, n int) string {
	b.Helper()
	path := filepath.Join(b.TempDir(), "audit.jsonl")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriter(f)
	c := audit.NewChain("chn_bench")
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	k8s := &audit.Identity{Iss: "https://issuer.test", Sub: "system:serviceaccount:payments:api", JTI: "tok-1"}
	for i := range n {
		id := fmt.Sprintf("iss_01JXBENCH0000000000%06d", i/3)
		var ev *audit.Event
		switch i % 3 {
		case 0:
			ev = &audit.Event{Type: audit.TypeIssue, RequestID: fmt.Sprintf("req_%08d", i), IssuanceID: id, Workload: "payments-api", Owner: "team-payments",
				SessionID: "ses_a", Grant: "stripe", Kind: broker.KindProxy, Identity: k8s, Source: &audit.Source{IP: "10.0.0.5", UserAgent: "kube/1.0"},
				Credential: &audit.Credential{Fingerprint: broker.Fingerprint(id), JTI: "jti-" + id, ExpiresAt: start.Add(time.Hour).Format(time.RFC3339)},
				Outcome:    &audit.Outcome{Status: 200}}
		case 1:
			ev = &audit.Event{Type: audit.TypeUse, RequestID: fmt.Sprintf("req_%08d", i), IssuanceID: id, UseID: fmt.Sprintf("use_%08d", i), Workload: "payments-api", Grant: "stripe",
				Source: &audit.Source{IP: "10.0.0.5"}, Upstream: &audit.Upstream{Method: "POST", Host: "api.stripe.test", Path: "/v1/charges"}}
		default:
			ev = &audit.Event{Type: audit.TypeUseResult, RequestID: fmt.Sprintf("req_%08d", i-1), IssuanceID: id, UseID: fmt.Sprintf("use_%08d", i-1),
				Outcome: &audit.Outcome{Status: 200}}
		}
		line, err := c.Seal(ev, start.Add(time.Duration(i)*time.Millisecond))
		if err != nil {
			b.Fatal(err)
		}
		w.Write(line)
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return path
}

// BenchmarkLoadAuditFiles is the reading of an offline trace or report
// (loadAuditFiles) over 100k events, with the hash chain check (the
// default) and without it (--no-verify). cpu-ns/op is the CPU time of
// the process (all threads, GC included) per reading.
func BenchmarkLoadAuditFiles(b *testing.B) {
	path := benchAuditFile(b, 100_000)
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	e := &env{ctx: context.Background(), getenv: func(string) string { return "" }, stdout: io.Discard, stderr: io.Discard, progressEvery: time.Hour}
	for _, check := range []bool{true, false} {
		b.Run(fmt.Sprintf("check=%v", check), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(fi.Size())
			// CPU time too (procCPU, where known): the wall time of a
			// shared machine says little.
			cpu0, cpuOK := procCPU(os.Getpid())
			for b.Loop() {
				x, err := trace.NewIndex(trace.Options{})
				if err != nil {
					b.Fatal(err)
				}
				rep, err := loadAuditFiles(e, "keytrail trace", x, []string{path}, check)
				if err != nil || check && !rep.OK() {
					b.Fatalf("loadAuditFiles = %v, %v", rep, err)
				}
				if st := x.Stats(); st.Events != 100_000 || st.Skipped != 0 {
					b.Fatalf("Stats() = %+v", st)
				}
			}
			if cpu1, ok := procCPU(os.Getpid()); ok && cpuOK {
				b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "cpu-ns/op")
			}
		})
	}
}
