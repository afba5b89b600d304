package authn

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

// decodesAsClaims reports whether jwt/v5 (WithJSONNumber) decodes b's
// first value into claims: the only payloads checkPayloadIsOneValue sees.
func decodesAsClaims(b []byte) bool {
	c := jwt.MapClaims{}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	return dec.Decode(&c) == nil
}

// onePayloadCase checks oneValue against json.Valid on b and on b with
// every kind of tail a payload might carry.
func onePayloadCase(t *testing.T, b []byte) {
	t.Helper()
	for _, tail := range []string{"", " ", "\r\n\t ", "\x00", "x", "}", "]", "{}", "[]", `"`, `"}`, `\`, "1", "null", ` {"a":1}`, "\n\n]", "\v", "\u00a0"} {
		for _, head := range []string{"", " \n", "\t"} {
			in := []byte(head + string(b) + tail)
			if !decodesAsClaims(in) {
				continue
			}
			if got, want := oneValue(in), json.Valid(in); got != want {
				t.Fatalf("oneValue(%q) = %v, json.Valid = %v", in, got, want)
			}
		}
	}
}

// TestOneValueIsJSONValid: for every payload jwt/v5 decodes into claims,
// oneValue answers as json.Valid: objects with strings full of quotes,
// backslashes, brackets and escapes, nested objects and arrays, followed by
// whitespace, garbage, a second value or an unclosed string.
func TestOneValueIsJSONValid(t *testing.T) {
	tricky := []string{``, `"`, `\`, `\\`, `\"`, `{`, `}`, `[`, `]`, `"}`, `\"}`, `{"a":1}`, "\n", "\t\x01", "é", "\u2028", `\u0022`, `\\"`, `"\`, "\xff"}
	r := rand.New(rand.NewPCG(1, 2))
	var value func(depth int) any
	value = func(depth int) any {
		switch n := r.IntN(7); {
		case n == 0 && depth < 4:
			m := map[string]any{}
			for range r.IntN(4) {
				m[tricky[r.IntN(len(tricky))]+tricky[r.IntN(len(tricky))]] = value(depth + 1)
			}
			return m
		case n == 1 && depth < 4:
			a := make([]any, r.IntN(4))
			for i := range a {
				a[i] = value(depth + 1)
			}
			return a
		case n == 2:
			return r.Float64() * 1e6
		case n == 3:
			return r.IntN(2) == 0
		case n == 4:
			return nil
		default:
			return strings.Repeat(tricky[r.IntN(len(tricky))], 1+r.IntN(3))
		}
	}
	for range 3000 {
		m := map[string]any{"iss": "https://issuer.example", "sub": value(0)}
		for range r.IntN(5) {
			m[tricky[r.IntN(len(tricky))]] = value(0)
		}
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		onePayloadCase(t, b)
		// The same with encoding/json's HTML escaping off and indented,
		// as other issuers write it.
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		if err := enc.Encode(m); err != nil {
			t.Fatal(err)
		}
		onePayloadCase(t, bytes.TrimRight(buf.Bytes(), "\n"))
	}
	// Hand-written ones: raw escapes encoding/json never writes.
	for _, s := range []string{`{}`, `{"a":"\\"}`, `{"a":"\\\""}`, `{"a":"\"}\""}`, `{"a":["]",{"b":"}"}]}`, `{"a":"\u005c"}`, `{"a":"x\/y"}`, `null`, `[]`, `1`, `"s"`} {
		onePayloadCase(t, []byte(s))
	}
}

// FuzzOneValue: oneValue is json.Valid on every input jwt/v5 decodes into
// claims.
func FuzzOneValue(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":"\\"} `, `{"a":"\"}"}x`, `{"a":[1,{"b":"]"}]}]`, ` {"a":1}{"b":2}`, `null`, `{"a":"\\\""}` + "\x00"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !decodesAsClaims(b) {
			return
		}
		if got, want := oneValue(b), json.Valid(b); got != want {
			t.Fatalf("oneValue(%q) = %v, json.Valid = %v", b, got, want)
		}
	})
}
