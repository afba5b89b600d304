package trace_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/trace"
)

// On a deployment of several instances, the id of a use, revocation or
// request made through another instance is only in that instance's audit
// log (the store holds issuances): the online trace's "not found" says
// which log it searched, and where such ids are found, keeping its stable
// error code. What callers are shown names it as the broker's audit log,
// not by its path on the server; the error's text (the server's log) has
// the path.
func TestLiveNotFoundSaysWhichLogWasSearched(t *testing.T) {
	dir := t.TempDir()
	path := writeLines(t, dir, "audit.jsonl", sealed(t, "chn_nf", 0, fixtureEvents()))
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		store broker.Store
		want  []string
	}{
		{"with-store", &fakeStore{byID: map[string]*broker.Issuance{}}, []string{"store"}},
		{"without-store", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			live, err := trace.NewLive(trace.LiveOptions{Path: path, Store: tc.store})
			if err != nil {
				t.Fatal(err)
			}
			for _, q := range []string{"use_01OTHERINSTANCE", "rev_01OTHERINSTANCE", "req_01OTHERINSTANCE"} {
				_, err := live.Trace(ctx, q)
				if !errors.Is(err, broker.ErrNotFound) || !errors.Is(err, trace.ErrNoMatch) {
					t.Fatalf("Trace(%s) = %v, want not found (ErrNoMatch)", q, err)
				}
				e := broker.AsError(err)
				if code := broker.CodeOf(e); code != "not_found" || e.Reason != "no_match" {
					t.Errorf("Trace(%s): code %q reason %q, want not_found, no_match", q, code, e.Reason)
				}
				for _, want := range append([]string{"no issuance matches this value", "the broker's audit log", "other instance", "keytrail trace", "--audit-log"}, tc.want...) {
					if !strings.Contains(e.Safe, want) {
						t.Errorf("Trace(%s) message %q does not say %q", q, e.Safe, want)
					}
				}
				if strings.Contains(e.Safe, dir) {
					t.Errorf("Trace(%s) message %q shows the server's audit directory", q, e.Safe)
				}
				if !strings.Contains(err.Error(), path) {
					t.Errorf("Trace(%s) error %q does not name the audit file searched, for the server's log", q, err)
				}
				if strings.Contains(e.Safe, q) {
					t.Errorf("Trace(%s) message %q repeats the query", q, e.Safe)
				}
			}
		})
	}
}
