package trace_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/trace"
)

// FuzzLookup: any query either resolves or fails with a category, never
// panics, and never shows a raw credential-shaped query in the answer.
func FuzzLookup(f *testing.F) {
	for _, s := range []string{secretA, secretB, secretC, idA, "use_U1", "rev_R1", "req_R", "accA0000", "7A:3B:01:FF", "7a3b01ff",
		broker.Fingerprint(secretA), strings.TrimPrefix(broker.Fingerprint(secretA), "sha256:"), "sha256:", "", "   ", "eyJhbGciOiJFUzI1NiJ9.e30.sig"} {
		f.Add(s)
	}
	x := fixtureIndex(f)
	f.Fuzz(func(t *testing.T, q string) {
		res, err := x.Lookup(q)
		if err != nil {
			if !strings.Contains(err.Error(), "not found") && !strings.Contains(err.Error(), "invalid request") {
				t.Fatalf("Lookup(%q) = %v, want a not-found or invalid-request error", q, err)
			}
			return
		}
		if trace.LooksSecret(q) {
			js, _ := json.Marshal(res)
			if bytes.Contains(js, []byte(strings.TrimSpace(q))) {
				t.Fatalf("Lookup(%q): the answer shows the raw credential", q)
			}
		}
	})
}

// FuzzNormalizeFingerprint: an accepted fingerprint is canonical and
// normalising it again is the identity.
func FuzzNormalizeFingerprint(f *testing.F) {
	for _, s := range []string{broker.Fingerprint("x"), "SHA256:" + strings.Repeat("AB", 32), strings.Repeat("0", 64), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU", "sha256:zz", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		fp, ok := trace.NormalizeFingerprint(v)
		if !ok {
			return
		}
		if len(fp) != len("sha256:")+64 || fp != strings.ToLower(fp) {
			t.Fatalf("NormalizeFingerprint(%q) = %q, not canonical", v, fp)
		}
		again, ok := trace.NormalizeFingerprint(fp)
		if !ok || again != fp {
			t.Fatalf("NormalizeFingerprint(%q) = %q, %v, want itself", fp, again, ok)
		}
	})
}

// FuzzParseVaultLine: never panics; an accepted line has a type.
func FuzzParseVaultLine(f *testing.F) {
	when := time.Date(2025, 6, 1, 10, 0, 0, 0, time.UTC)
	for _, s := range []string{
		vaultEntry("request", "r1", "read", "auth/token/lookup-self", "token-keytrail-w", "acc1", map[string]string{"issuance_id": "iss_1"}, []string{"default"}, when),
		vaultEntry("response", "r1", "read", "p", "root", "hmac-sha256:ab", nil, []string{"root"}, when),
		`{"type":"request","time":"bad","new_field":{"x":1}}`, `["request"]`, `{"time":"2025-01-01T00:00:00Z"}`, `{"type":"request","auth":{`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := trace.ParseVaultLine(b)
		if err == nil && e.Type == "" {
			t.Fatalf("ParseVaultLine(%q) accepted a line without type", b)
		}
	})
}

// FuzzConsume: any byte stream is consumed up to its last newline without
// panicking.
func FuzzConsume(f *testing.F) {
	lines := sealed(f, "chn_fuzz", 0, fixtureEvents()[:4])
	f.Add(bytes.Join(lines, []byte("\n")))
	f.Add(append(bytes.Join(lines, []byte("\n")), '\n'))
	f.Add([]byte("{}\n{\"v\":1}\nnot json\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		x, _ := trace.NewIndex(trace.Options{MaxEvents: 3})
		n, err := x.Consume(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		want := int64(bytes.LastIndexByte(b, '\n') + 1)
		if n != want {
			t.Fatalf("Consume(%q) = %d, want %d (through the last newline)", b, n, want)
		}
	})
}
