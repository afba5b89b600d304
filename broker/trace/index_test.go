package trace_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

func fixtureIndex(t testing.TB) *trace.Index {
	t.Helper()
	x, err := trace.NewIndex(trace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range sealed(t, "chn_fixture", 0, fixtureEvents()) {
		if err := x.AddLine(line); err != nil {
			t.Fatalf("AddLine = %v", err)
		}
	}
	return x
}

// summary is what a trace answer must get right, compared as a whole.
type summary struct {
	Issuance    string
	Workload    string
	Kind, Value string
	Uses        []string // type:use id or request id
	Revocations []string // type:revocation id
	Also        []string
	From        string
}

func summarize(r *trace.Result) summary {
	s := summary{Issuance: r.Issuance.ID, Workload: r.Issuance.Workload, Kind: r.Query.Kind, Value: r.Query.Value, Also: r.AlsoMatched, From: r.From}
	for _, ev := range r.Uses {
		id := ev.UseID
		if id == "" {
			id = ev.RequestID
		}
		s.Uses = append(s.Uses, ev.Type+":"+id)
	}
	for _, ev := range r.Revocations {
		s.Revocations = append(s.Revocations, ev.Type+":"+ev.RevocationID)
	}
	return s
}

func TestLookup(t *testing.T) {
	x := fixtureIndex(t)
	sumA := sha256.Sum256([]byte(secretA))
	fpA := "sha256:" + hex.EncodeToString(sumA[:])
	revsA := []string{"revoke:rev_R1", "block:rev_R1", "revoke_result:rev_R1"}
	usesA := []string{"introspect:use_I2"}
	usesB := []string{"use:use_U1", "use_result:use_U1", "shared_use_suspected:req_U2"}
	a := func(kind, value string) summary {
		return summary{Issuance: idA, Workload: "payments-api", Kind: kind, Value: value, Uses: usesA, Revocations: revsA, From: trace.FromAuditLog}
	}
	b := func(kind, value string) summary {
		return summary{Issuance: idB, Workload: "payments-api", Kind: kind, Value: value, Uses: usesB, From: trace.FromAuditLog}
	}
	c := func(kind, value string) summary {
		return summary{Issuance: idC, Workload: "reports", Kind: kind, Value: value, From: trace.FromAuditLog}
	}
	cases := []struct {
		name string
		q    string
		want summary
	}{
		{"ok/raw-vault-token", secretA, a(trace.KindCredential, fpA)},
		{"ok/raw-with-spaces", "  " + secretA + "\n", a(trace.KindCredential, fpA)},
		{"ok/fingerprint-prefixed", fpA, a(trace.KindFingerprint, fpA)},
		{"ok/fingerprint-bare-hex", hex.EncodeToString(sumA[:]), a(trace.KindFingerprint, fpA)},
		{"ok/fingerprint-upper-hex", strings.ToUpper(hex.EncodeToString(sumA[:])), a(trace.KindFingerprint, fpA)},
		{"ok/fingerprint-base64", base64.StdEncoding.EncodeToString(sumA[:]), a(trace.KindFingerprint, fpA)},
		{"ok/fingerprint-base64url-raw", base64.RawURLEncoding.EncodeToString(sumA[:]), a(trace.KindFingerprint, fpA)},
		{"ok/fingerprint-prefixed-base64", "sha256:" + base64.StdEncoding.EncodeToString(sumA[:]), a(trace.KindFingerprint, fpA)},
		{"ok/issuance-id", idA, a(trace.KindIssuanceID, idA)},
		{"ok/use-id-introspect", "use_I2", a(trace.KindUseID, "use_I2")},
		{"ok/revocation-id", "rev_R1", a(trace.KindRevocationID, "rev_R1")},
		{"ok/issue-request-id", "req_A", a(trace.KindRequestID, "req_A")},
		{"ok/revoke-request-id", "req_R", a(trace.KindRequestID, "req_R")},
		{"ok/accessor", "accA0000", a(trace.KindAccessor, "accA0000")},
		{"ok/lease-id", "auth/token/create/leaseA", a(trace.KindLeaseID, "auth/token/create/leaseA")},
		{"ok/raw-proxy-credential", secretB, b(trace.KindCredential, broker.Fingerprint(secretB))},
		{"ok/jti", "jti-B", b(trace.KindJTI, "jti-B")},
		{"ok/proxy-use-id", "use_U1", b(trace.KindUseID, "use_U1")},
		{"ok/shared-use-request", "req_U2", b(trace.KindRequestID, "req_U2")},
		{"ok/username", "v-kt-iss_01JXC-reports", c(trace.KindUsername, "v-kt-iss_01JXC-reports")},
		{"ok/serial-as-recorded", "7A:3B:01:FF", c(trace.KindSerial, "7A:3B:01:FF")},
		{"ok/serial-other-spelling", "7a3b01ff", c(trace.KindSerial, "7a3b01ff")},
		{"ok/raw-db-password", secretC, c(trace.KindCredential, broker.Fingerprint(secretC))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := x.Lookup(tc.q)
			if err != nil {
				t.Fatalf("Lookup(%s) = %v, want %s", tc.name, err, tc.want.Issuance)
			}
			if diff := cmp.Diff(tc.want, summarize(res)); diff != "" {
				t.Errorf("Lookup(%s) = got, want want (-want +got):\n%s", tc.name, diff)
			}
			// The raw value of a credential appears nowhere in the answer.
			js, _ := json.Marshal(res)
			var txt bytes.Buffer
			if err := res.WriteText(&txt); err != nil {
				t.Fatal(err)
			}
			for _, secret := range []string{secretA, secretB, secretC} {
				if bytes.Contains(js, []byte(secret)) || strings.Contains(txt.String(), secret) {
					t.Errorf("Lookup(%s): the answer contains a raw credential", tc.name)
				}
			}
		})
	}
}

func TestLookupFailures(t *testing.T) {
	x := fixtureIndex(t)
	cases := []struct {
		name string
		q    string
		want error
	}{
		{"fail/empty", "   ", broker.ErrInvalidRequest},
		{"fail/too-long", strings.Repeat("a", trace.MaxQueryBytes+1), broker.ErrInvalidRequest},
		{"fail/unknown-value", "nothing-like-this", broker.ErrNotFound},
		{"fail/unknown-fingerprint", broker.Fingerprint("other"), broker.ErrNotFound},
		{"fail/deny-request-without-issuance", "req_D1", broker.ErrNotFound},
		{"fail/near-miss-id", idA + "X", broker.ErrNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := x.Lookup(tc.q)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Lookup(%s) = %v, %v, want %v", tc.name, res, err, tc.want)
			}
			if strings.Contains(err.Error(), tc.q) && len(tc.q) > 3 && strings.TrimSpace(tc.q) != "" {
				t.Errorf("Lookup(%s): error repeats the query: %v", tc.name, err)
			}
		})
	}
}

func TestLookupIssuanceRecord(t *testing.T) {
	x := fixtureIndex(t)
	res, err := x.Lookup(idB)
	if err != nil {
		t.Fatal(err)
	}
	want := &broker.Issuance{
		ID: idB, Workload: "payments-api", Owner: "team-payments", SessionID: "ses_a", Grant: "stripe", Kind: broker.KindProxy,
		Identity: broker.IdentityRef{Iss: "https://issuer.test", Sub: "system:serviceaccount:payments:api", JTI: "tok-1"},
		Claims:   map[string]any{"namespace": "payments", "sub": "system:serviceaccount:payments:api"},
		Source:   broker.Source{IP: "10.0.0.5"}, IssuedAt: at(2 * time.Second).Truncate(time.Nanosecond),
		ExpiresAt: at(10 * time.Minute).Truncate(time.Second),
		Refs:      broker.CredentialRefs{Fingerprint: broker.Fingerprint(secretB), JTI: "jti-B", ExpiresAt: at(10 * time.Minute).Truncate(time.Second)},
		RequestID: "req_B", AuditChain: "chn_fixture",
	}
	if diff := cmp.Diff(want, res.Issuance); diff != "" {
		t.Errorf("Lookup(%s).Issuance = got, want want (-want +got):\n%s", idB, diff)
	}
	resA, _ := x.Lookup(idA)
	if resA.Issuance.RevocationID != "rev_R1" || !resA.Issuance.RevokedAt.Equal(at(9*time.Second)) {
		t.Errorf("Lookup(%s) revoked = %s at %v, want rev_R1 at %v", idA, resA.Issuance.RevocationID, resA.Issuance.RevokedAt, at(9*time.Second))
	}
	var txt bytes.Buffer
	if err := resA.WriteText(&txt); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"workload     payments-api", "owner        team-payments", "session      ses_a", "10.0.0.5 (kube/1.0)",
		"iss=https://issuer.test sub=system:serviceaccount:payments:api jti=tok-1", "revoke", "by secops:alice", `reason "INC-1: token leaked"`, "introspect"} {
		if !strings.Contains(txt.String(), want) {
			t.Errorf("WriteText does not show %q:\n%s", want, txt.String())
		}
	}
}

// TestLookupSerialAsNumber: a serial is a number. Vault writes it as byte
// pairs, with a leading zero when the first byte is below 0x10
// ("0f:3b:..."); Go's big.Int Text(16) and many TLS servers' logs print it
// without ("f3b..."), and PostgreSQL's ssl_client_serial() and Go's
// SerialNumber.String() in decimal. All of them find the issuance. An
// all-digit value reads as hex and as decimal: when both readings match,
// both issuances are answers (AlsoMatched). Found in review: "f3b..." was
// "no match".
func TestLookupSerialAsNumber(t *testing.T) {
	const (
		vaultP = "0f:3b:5c:7d:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:01"
		idP    = "iss_01JXP0000000000000000000PP"
		idZ    = "iss_01JXZ0000000000000000000ZZ" // serial 0
		idH    = "iss_01JXH0000000000000000000HH" // serial 0x1234
		idD    = "iss_01JXD0000000000000000000DD" // serial 1234 = 0x04d2
	)
	x, err := trace.NewIndex(trace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i, is := range []struct{ id, serial string }{{idP, vaultP}, {idZ, "00"}, {idH, "12:34"}, {idD, "04:d2"}} {
		x.Add(&audit.Event{Type: audit.TypeIssue, Seq: uint64(i + 1), Chain: "chn_serial", Time: rfc(at(time.Duration(i) * time.Second)),
			IssuanceID: is.id, Workload: "payments-api", Owner: "team-payments", Grant: "payments-cert", Kind: broker.KindPKI,
			Credential: &audit.Credential{Serial: is.serial}})
	}
	n, _ := new(big.Int).SetString("0f3b5c7d112233445566778899aabbccddeeff01", 16)
	type answer struct {
		ID, Kind, Value string
		Also            []string
	}
	serial := func(id, q string, also ...string) answer { return answer{id, trace.KindSerial, q, also} }
	cases := []struct {
		name string
		q    string
		want answer
	}{
		{"ok/as-vault-wrote-it", vaultP, serial(idP, vaultP)},
		{"ok/openssl-with-leading-zero", "0F3B5C7D112233445566778899AABBCCDDEEFF01", serial(idP, "0F3B5C7D112233445566778899AABBCCDDEEFF01")},
		{"ok/number-in-hex-without-leading-zero", n.Text(16), serial(idP, "f3b5c7d112233445566778899aabbccddeeff01")},
		{"ok/number-in-hex-upper-case", "F3B5C7D112233445566778899AABBCCDDEEFF01", serial(idP, "F3B5C7D112233445566778899AABBCCDDEEFF01")},
		{"ok/more-leading-zeros", "000f3b5c7d112233445566778899aabbccddeeff01", serial(idP, "000f3b5c7d112233445566778899aabbccddeeff01")},
		{"ok/decimal-postgresql-ssl-client-serial", n.String(), serial(idP, "86958662417446940527215879799394005710644641537")},
		{"ok/all-zero", "00:00", serial(idZ, "00:00")},
		{"ok/all-zero-bare", "000", serial(idZ, "000")},
		{"ok/zero-as-recorded", "00", serial(idZ, "00")},
		{"ok/hex-letters-are-not-decimal", "4d2", serial(idD, "4d2")},
		{"ok/ambiguous-hex-and-decimal", "1234", serial(idH, "1234", idD)},
		{"ok/ambiguous-with-leading-zero", "01234", serial(idH, "01234", idD)},
		{"ok/openssl-serial-prefix", "serial=0F3B5C7D112233445566778899AABBCCDDEEFF01", serial(idP, "serial=0F3B5C7D112233445566778899AABBCCDDEEFF01")},
		{"ok/openssl-serial-prefix-all-digits-is-hex", "serial=1234", serial(idH, "serial=1234")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := x.Lookup(tc.q)
			if err != nil {
				t.Fatalf("Lookup(%s) = %v, want %s", tc.q, err, tc.want.ID)
			}
			got := answer{res.Issuance.ID, res.Query.Kind, res.Query.Value, res.AlsoMatched}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Lookup(%s) = got, want want (-want +got):\n%s", tc.q, diff)
			}
		})
	}
	near := new(big.Int).Add(n, big.NewInt(1))
	for _, q := range []string{near.Text(16), near.String(), "0f3b5c7d112233445566778899aabbccddeeff0100", "f3b5c7d112233445566778899aabbccddeeff0"} {
		if res, err := x.Lookup(q); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("Lookup(%s) = %+v, %v, want not found", q, res, err)
		}
	}
}

func TestIndexBound(t *testing.T) {
	x, err := trace.NewIndex(trace.Options{MaxEvents: 8})
	if err != nil {
		t.Fatal(err)
	}
	var evs []*audit.Event
	for i := range 20 {
		evs = append(evs, &audit.Event{Type: audit.TypeIssue, IssuanceID: "iss_" + string(rune('a'+i)), Workload: "w", Credential: &audit.Credential{Accessor: "acc" + string(rune('a'+i))}})
	}
	for _, l := range sealed(t, "chn_bound", 0, evs) {
		if err := x.AddLine(l); err != nil {
			t.Fatal(err)
		}
	}
	st := x.Stats()
	if st.Events > 8 || st.Events+int(st.Dropped) != 20 {
		t.Fatalf("Stats() = %+v, want at most 8 kept and kept+dropped = 20", st)
	}
	if _, err := x.Lookup("acca"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Lookup(oldest) = %v, want not found after the bound dropped it", err)
	}
	if res, err := x.Lookup("acct"); err != nil || res.Issuance.ID != "iss_t" {
		t.Errorf("Lookup(newest) = %v, %v, want iss_t", res, err)
	}
	if _, err := trace.NewIndex(trace.Options{MaxEvents: -1}); err == nil {
		t.Errorf("NewIndex(MaxEvents: -1) = nil error, want an error")
	}
}

func TestConsumeLeavesIncompleteLine(t *testing.T) {
	lines := sealed(t, "chn_consume", 0, fixtureEvents()[:3])
	var buf bytes.Buffer
	buf.Write(lines[0])
	buf.WriteString("\n")
	buf.WriteString("{not json}\n")
	buf.Write(lines[1])
	buf.WriteString("\n")
	buf.Write(lines[2][:20]) // a write in progress
	x, _ := trace.NewIndex(trace.Options{})
	n, err := x.Consume(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	want := int64(len(lines[0]) + 1 + len("{not json}\n") + len(lines[1]) + 1)
	if n != want {
		t.Errorf("Consume() = %d, want %d (up to the last newline)", n, want)
	}
	// policy_load is not kept; the issue event is; the bad line is counted.
	if got, want := x.Stats(), (trace.Stats{Events: 1, Skipped: 1, Max: trace.DefaultMaxEvents}); got != want {
		t.Errorf("Stats() = %+v, want %+v", got, want)
	}
}
