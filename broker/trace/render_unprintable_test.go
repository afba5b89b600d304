package trace_test

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// Values the text output of trace and report shows that callers write: a
// token's sub and jti (an old log holds what authn refuses now, bad_subject
// came later; a jti was never checked), an actor's, the claims used (a
// GitHub ref or environment name is the CI user's), the User-Agent of any
// caller, an upstream's path and request id. An escape sequence in one
// rewrote the operator's terminal, a CR or LF forged a line, U+202E made
// it read backwards: each is now shown quoted with Go escapes. The JSON
// output keeps the exact value.
var (
	hostileEsc  = "\x1b[2J\x1b[31mroot"
	hostileCRLF = "ci\r\n  identity      iss=https://issuer.test sub=admin"
	hostileBidi = "user:\u202egnp.exe"
	hostileTab  = "a\tb"
)

// noRawControl fails t when text holds a control or bidi character but
// the newlines and tabs that lay it out, and wants each of quoted in it.
func noRawControl(t *testing.T, what, text string, quoted ...string) {
	t.Helper()
	if i := strings.IndexAny(text, "\x1b\r\u202e\u0085"); i >= 0 {
		t.Errorf("%s holds %q at %d, want it quoted:\n%s", what, text[i:i+1], i, text)
	}
	if strings.Contains(text, "\n  identity      iss=https://issuer.test sub=admin") {
		t.Errorf("%s has a line forged by a CR/LF in a value:\n%s", what, text)
	}
	for _, q := range quoted {
		if !strings.Contains(text, q) {
			t.Errorf("%s lacks %s:\n%s", what, q, text)
		}
	}
}

func TestTraceTextQuotesUnprintableValues(t *testing.T) {
	const id = "iss_01JXH0000000000000000000HH"
	secret := "ktp_aG9zdGlsZS12YWx1ZXMtZml4dHVyZS1wcm94eQ"
	other := &audit.Identity{Iss: "https://issuer.test", Sub: hostileBidi, JTI: "tok-other"}
	evs := []*audit.Event{
		{Type: audit.TypeIssue, RequestID: "req_H", IssuanceID: id, Workload: "ci", Owner: "team-ci",
			SessionID: "ses_h", Grant: "deploy", Kind: broker.KindProxy,
			Identity:   &audit.Identity{Iss: "https://issuer.test", Sub: hostileEsc, JTI: hostileCRLF},
			Act:        []audit.Identity{{Iss: "https://issuer.test", Sub: hostileBidi}},
			Source:     &audit.Source{IP: "10.0.0.9", UserAgent: hostileEsc},
			Credential: &audit.Credential{Fingerprint: broker.Fingerprint(secret), ExpiresAt: rfc(at(10 * time.Minute))},
			Details:    map[string]any{"claims": map[string]any{"ref": hostileCRLF, "environment": hostileBidi, "job": hostileTab}},
			Outcome:    &audit.Outcome{Status: 200}},
		{Type: audit.TypeUse, RequestID: "req_HU", UseID: "use_HU", IssuanceID: id, Workload: "ci", Owner: "team-ci",
			SessionID: "ses_h", Grant: "deploy", Kind: broker.KindProxy, Credential: &audit.Credential{Fingerprint: broker.Fingerprint(secret)},
			Act:      []audit.Identity{*other},
			Source:   &audit.Source{IP: "10.0.0.9", UserAgent: hostileCRLF},
			Upstream: &audit.Upstream{Method: "GET", Host: "api.example.com", Path: "/v1/" + hostileEsc}},
		{Type: audit.TypeUseResult, RequestID: "req_HU", UseID: "use_HU", IssuanceID: id, Workload: "ci", Owner: "team-ci",
			SessionID: "ses_h", Grant: "deploy", Kind: broker.KindProxy, Credential: &audit.Credential{Fingerprint: broker.Fingerprint(secret)},
			Upstream: &audit.Upstream{Method: "GET", Host: "api.example.com", Path: "/v1/x", Status: 200},
			Details:  map[string]any{"upstream_request_ids": map[string]string{"X-Request-Id": hostileBidi}},
			Outcome:  &audit.Outcome{Status: 200}},
	}
	x, err := trace.NewIndex(trace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range sealed(t, "chn_hv", 0, evs) {
		if err := x.AddLine(l); err != nil {
			t.Fatal(err)
		}
	}
	res, err := x.Lookup(id)
	if err != nil {
		t.Fatal(err)
	}
	var txt bytes.Buffer
	if err := res.WriteText(&txt); err != nil {
		t.Fatal(err)
	}
	q := strconv.Quote
	noRawControl(t, "WriteText", txt.String(),
		"sub="+q(hostileEsc), "jti="+q(hostileCRLF), // identity
		"acting for[0]", "sub="+q(hostileBidi), // act row, and the use's act
		"ref="+q(hostileCRLF), "environment="+q(hostileBidi), "job="+q(hostileTab), // claims used
		"10.0.0.9 ("+q(hostileEsc)+")", "10.0.0.9 ("+q(hostileCRLF)+")", // User-Agents
		"/v1/"+strings.Trim(q(hostileEsc), `"`), q(hostileBidi), // upstream path, request id
	)
	// JSON is exact: the values as the log holds them.
	js, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var back trace.Result
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	if got := back.Issuance.Identity; got.Sub != hostileEsc || got.JTI != hostileCRLF {
		t.Errorf("JSON identity = sub %q jti %q, want %q %q", got.Sub, got.JTI, hostileEsc, hostileCRLF)
	}
	if got := back.Issuance.Source.UserAgent; got != hostileEsc {
		t.Errorf("JSON user agent = %q, want %q", got, hostileEsc)
	}
	if got := back.Issuance.Claims["ref"]; got != hostileCRLF {
		t.Errorf("JSON claim ref = %q, want %q", got, hostileCRLF)
	}
}

// A printable value, non-ASCII included, is shown as it is.
func TestTraceTextShowsPrintableValuesAsTheyAre(t *testing.T) {
	x := fixtureIndex(t)
	res, err := x.Lookup(idA)
	if err != nil {
		t.Fatal(err)
	}
	var txt bytes.Buffer
	if err := res.WriteText(&txt); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"iss=https://issuer.test sub=system:serviceaccount:payments:api jti=tok-1", "10.0.0.5 (kube/1.0)"} {
		if !strings.Contains(txt.String(), want) {
			t.Errorf("WriteText lacks %q:\n%s", want, txt.String())
		}
	}
}

func TestReportTextQuotesUnprintableUnownedIdentity(t *testing.T) {
	deny := func(seq int, sub, grant string) *audit.Event {
		return &audit.Event{Type: audit.TypeDeny, Seq: uint64(seq), Chain: "chn_a", Time: at(time.Duration(seq) * time.Second).Format(time.RFC3339Nano),
			Identity: &audit.Identity{Iss: "https://issuer.test", Sub: sub}, Grant: grant,
			Source:  &audit.Source{IP: "10.0.0.9", UserAgent: hostileEsc},
			Outcome: &audit.Outcome{Status: 403, Error: "access_denied", Reason: "no_workload"}}
	}
	evs := []*audit.Event{deny(1, hostileEsc, "deploy"), deny(2, hostileCRLF, hostileBidi), deny(3, "repo:acme/Zoë:environment:Prod East", "deploy"),
		deny(4, "repo:o/r:environment:👩\u200d💻", "deploy")} // ZWJ: authn takes it, shown quoted
	rep, err := trace.BuildReport(trace.ReportInput{Now: at(time.Minute), Events: evs})
	if err != nil {
		t.Fatal(err)
	}
	var txt bytes.Buffer
	if err := rep.WriteText(&txt); err != nil {
		t.Fatal(err)
	}
	q := strconv.Quote
	noRawControl(t, "report WriteText", txt.String(),
		"sub="+q(hostileEsc)+":", "sub="+q(hostileCRLF)+":", "asked for "+q(hostileBidi),
		"sub=repo:acme/Zoë:environment:Prod East:", `sub="repo:o/r:environment:👩\u200d💻":`)
	js, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back trace.Report
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	subs := map[string]bool{}
	for _, u := range back.UnownedIdentities {
		subs[u.Sub] = true
	}
	if !subs[hostileEsc] || !subs[hostileCRLF] {
		t.Errorf("JSON unowned subs = %v, want %q and %q exactly", subs, hostileEsc, hostileCRLF)
	}
}
