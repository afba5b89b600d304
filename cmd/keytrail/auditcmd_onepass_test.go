package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// TestLoadAuditFilesCheckedIsLoadAndVerify: an offline trace or report with
// the chain check reads each file once, through audit.Verify, which hands
// the index each line it decodes. What it indexes and reports must be what
// trace.LoadFiles and audit.VerifyFiles, each reading the files on its
// own, make of them: well-formed and broken chains, malformed, empty and
// too long lines, an incomplete last line, and a log in two files.
func TestLoadAuditFilesCheckedIsLoadAndVerify(t *testing.T) {
	c := audit.NewChain("chn_one")
	start := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	var lines [][]byte
	for i := range 8 {
		ev := &audit.Event{Type: audit.TypeIssue, RequestID: fmt.Sprintf("req_%d", i), IssuanceID: fmt.Sprintf("iss_01JXONEPASS00000000000%03d", i), Workload: "w"}
		if i%2 == 1 {
			ev = &audit.Event{Type: audit.TypeUse, RequestID: fmt.Sprintf("req_%d", i), IssuanceID: fmt.Sprintf("iss_01JXONEPASS00000000000%03d", i-1), UseID: fmt.Sprintf("use_%d", i)}
		}
		l, err := c.Seal(ev, start.Add(time.Duration(i)*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, l)
	}
	join := func(ls ...[]byte) []byte {
		var b bytes.Buffer
		for _, l := range ls {
			b.Write(l)
			b.WriteByte('\n')
		}
		return b.Bytes()
	}
	tampered := bytes.Replace(lines[3], []byte(`"use_3"`), []byte(`"use_X"`), 1)
	long := bytes.Repeat([]byte("x"), audit.MaxLineBytes+1)
	for _, tc := range []struct {
		name  string
		files [][]byte // the rotated file first, if two
	}{
		{"intact", [][]byte{join(lines...)}},
		{"tampered", [][]byte{join(append(append(bytesClone(lines[:3]), tampered), lines[4:]...)...)}},
		{"malformed-and-empty", [][]byte{join(lines[0], []byte("{not json"), lines[1], nil, lines[2])}},
		{"too-long", [][]byte{join(lines[0], long, lines[1], long[:audit.MaxLineBytes], lines[2])}},
		{"incomplete-last", [][]byte{append(join(lines[:5]...), lines[5][:20]...)}},
		{"line-removed", [][]byte{join(append(bytesClone(lines[:2]), lines[3:]...)...)}},
		{"rotated", [][]byte{join(lines[:4]...), join(lines[4:]...)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "audit.jsonl")
			var paths []string
			for i, b := range tc.files {
				p := path
				if i < len(tc.files)-1 {
					p = path + "." + start.Add(time.Duration(i)*time.Hour).Format(trace.RotatedLayout)
				}
				if err := os.WriteFile(p, b, 0o600); err != nil {
					t.Fatal(err)
				}
				paths = append(paths, p)
			}
			e := &env{ctx: context.Background(), getenv: func(string) string { return "" }, stdout: io.Discard, stderr: io.Discard, progressEvery: time.Hour}
			got, err := trace.NewIndex(trace.Options{})
			if err != nil {
				t.Fatal(err)
			}
			gotRep, err := loadAuditFiles(e, "keytrail trace", got, []string{path}, true)
			if err != nil {
				t.Fatal(err)
			}
			want, err := trace.NewIndex(trace.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := trace.LoadFiles(want, paths); err != nil {
				t.Fatal(err)
			}
			wantRep, _ := audit.VerifyFiles(paths, audit.VerifyOptions{})
			if g, w := got.Stats(), want.Stats(); g != w {
				t.Errorf("Stats() = %+v, want %+v", g, w)
			}
			if g, w := got.Events(), want.Events(); !reflect.DeepEqual(g, w) {
				t.Errorf("events differ: %d events, want %d", len(g), len(w))
			}
			if !reflect.DeepEqual(gotRep, wantRep) {
				t.Errorf("report = %+v\nwant %+v", gotRep, wantRep)
			}
		})
	}
}

func bytesClone(ls [][]byte) [][]byte { return append([][]byte(nil), ls...) }
