package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/MicahParks/jwkset"
	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/adapters/auditfile"
	"github.com/keytrail/keytrail/broker/audit"
)

// fakeTransitSigner signs like a Vault transit key: AlgVaultTransit, kid
// "<key>:<version>", Ed25519 or ES256 raw r||s.
type fakeTransitSigner struct {
	kid string
	ed  ed25519.PrivateKey
	ec  *ecdsa.PrivateKey
}

func (s *fakeTransitSigner) KeyID() string { return s.kid }
func (s *fakeTransitSigner) Alg() string   { return audit.AlgVaultTransit }
func (s *fakeTransitSigner) Sign(_ context.Context, msg []byte) ([]byte, error) {
	if s.ed != nil {
		return ed25519.Sign(s.ed, msg), nil
	}
	h := sha256.Sum256(msg)
	r, ss, err := ecdsa.Sign(rand.Reader, s.ec, h[:])
	if err != nil {
		return nil, err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	ss.FillBytes(sig[32:])
	return sig, nil
}

func (s *fakeTransitSigner) public() any {
	if s.ed != nil {
		return s.ed.Public()
	}
	return &s.ec.PublicKey
}

func newFakeTransitSigners(t *testing.T) (ed, ec *fakeTransitSigner) {
	t.Helper()
	_, edPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecPriv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeTransitSigner{kid: "cp-ed:1", ed: edPriv}, &fakeTransitSigner{kid: "cp-ec:2", ec: ecPriv}
}

// jwkJSON encodes pub as the broker's JWKS handler does.
func jwkJSON(t testing.TB, kid, alg string, pub any) json.RawMessage {
	t.Helper()
	jwk, err := jwkset.NewJWKFromKey(pub, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: jwkset.ALG(alg), USE: jwkset.UseSig}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(jwk.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func jwksJSON(t testing.TB, keys ...json.RawMessage) []byte {
	t.Helper()
	if keys == nil {
		keys = []json.RawMessage{}
	}
	b, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// parseJWKSCases are the table of TestParseJWKS and the seeds of
// FuzzParseJWKS.
func parseJWKSCases(t testing.TB) []struct {
	name    string
	in      []byte
	want    []string // kid alg type
	wantErr string
} {
	edPub, edPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ed := jwkJSON(t, "keytrail-ed25519:1", "EdDSA", edPub)
	es := jwkJSON(t, "keytrail-signing:1", "ES256", &ec.PublicKey)
	var withD map[string]any
	_ = json.Unmarshal(ed, &withD)
	withD["d"] = base64.RawURLEncoding.EncodeToString(edPriv.Seed())
	edWithD, _ := json.Marshal(withD)
	enc := json.RawMessage(fmt.Sprintf(`{"kty":"OKP","crv":"Ed25519","use":"enc","kid":"e:1","x":%q}`, base64.RawURLEncoding.EncodeToString(edPub)))
	noKID := json.RawMessage(fmt.Sprintf(`{"kty":"OKP","crv":"Ed25519","x":%q}`, base64.RawURLEncoding.EncodeToString(edPub)))
	// RFC 9864's fully specified alg name for EdDSA over Ed25519.
	fullySpecified := json.RawMessage(fmt.Sprintf(`{"kty":"OKP","crv":"Ed25519","alg":"Ed25519","kid":"fs:1","x":%q}`, base64.RawURLEncoding.EncodeToString(edPub)))
	return []struct {
		name    string
		in      []byte
		want    []string
		wantErr string
	}{
		{name: "ok/ed25519-and-p256", in: jwksJSON(t, ed, es), want: []string{"keytrail-ed25519:1 EdDSA ed25519.PublicKey", "keytrail-signing:1 ES256 *ecdsa.PublicKey"}},
		{name: "ok/alg-ed25519", in: jwksJSON(t, fullySpecified), want: []string{"fs:1 Ed25519 ed25519.PublicKey"}},
		{name: "ok/private-member-ignored", in: jwksJSON(t, json.RawMessage(edWithD)), want: []string{"keytrail-ed25519:1 EdDSA ed25519.PublicKey"}},
		{name: "ok/skips-rsa-p384-enc-and-no-kid", in: jwksJSON(t,
			jwkJSON(t, "rsa:1", "RS256", &rsaKey.PublicKey), jwkJSON(t, "p384:1", "ES384", &p384.PublicKey), enc, noKID, ed),
			want: []string{"keytrail-ed25519:1 EdDSA ed25519.PublicKey"}},
		{name: "fail/not-json", in: []byte("<html>"), wantErr: "not a JSON Web Key Set"},
		{name: "fail/no-keys-member", in: []byte(`{"issuer":"x"}`), wantErr: `no "keys" member`},
		{name: "fail/no-usable-key", in: jwksJSON(t, jwkJSON(t, "rsa:1", "RS256", &rsaKey.PublicKey)), wantErr: "no Ed25519 or P-256"},
		{name: "fail/empty-set", in: jwksJSON(t), wantErr: "no Ed25519 or P-256"},
		{name: "fail/malformed-key", in: []byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k:1","x":"!!"}]}`), wantErr: "keys[0]"},
		{name: "fail/keys-not-array", in: []byte(`{"keys":{}}`), wantErr: "not a JSON Web Key Set"},
	}
}

func TestParseJWKS(t *testing.T) {
	for _, tc := range parseJWKSCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			keys, err := parseJWKS(tc.in)
			var got []string
			for _, k := range keys {
				got = append(got, fmt.Sprintf("%s %s %T", k.KID, k.Alg, k.Key))
			}
			gotErr := ""
			if err != nil {
				gotErr = err.Error()
			}
			if diff := cmp.Diff(tc.want, got); diff != "" || !strings.Contains(gotErr, tc.wantErr) || (tc.wantErr == "") != (err == nil) {
				t.Errorf("parseJWKS(%s) = %v, %v; want %v, error containing %q", tc.in, got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func FuzzParseJWKS(f *testing.F) {
	for _, tc := range parseJWKSCases(f) {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		keys, err := parseJWKS(in)
		if err != nil {
			if keys != nil {
				t.Errorf("parseJWKS = %v keys and error %v", len(keys), err)
			}
			return
		}
		if len(keys) == 0 {
			t.Errorf("parseJWKS = no keys and no error")
		}
		for _, k := range keys {
			switch pub := k.Key.(type) {
			case ed25519.PublicKey:
				if len(pub) != ed25519.PublicKeySize {
					t.Errorf("Ed25519 key of %d bytes", len(pub))
				}
			case *ecdsa.PublicKey:
				if pub.Curve != elliptic.P256() {
					t.Errorf("ECDSA key not on P-256")
				}
			default:
				t.Errorf("key of type %T", k.Key)
			}
			if k.KID == "" {
				t.Errorf("key without kid")
			}
		}
	})
}

// writeSignedAudit writes an audit file whose checkpoints s signs, and
// returns its path and the line number of its last (checkpoint) line.
func writeSignedAudit(t *testing.T, dir string, s audit.Signer) (string, int) {
	t.Helper()
	path := filepath.Join(dir, "audit.jsonl")
	sink, err := auditfile.Open(auditfile.Options{Path: path, Signer: s, CheckpointEvery: 2, NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := sink.Append(context.Background(), &audit.Event{Type: audit.TypeUse, RequestID: fmt.Sprint("req_", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, bytes.Count(data, []byte("\n"))
}

// forgeLastCheckpoint flips a bit of the last line's checkpoint signature.
// The last line is hashed by no other line, so only the signature is wrong.
func forgeLastCheckpoint(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
	last := lines[len(lines)-1]
	ev, err := audit.ParseLine(last)
	if err != nil || ev.Checkpoint == nil {
		t.Fatalf("last line is not a checkpoint: %s", last)
	}
	sig, err := base64.StdEncoding.DecodeString(ev.Checkpoint.Signature)
	if err != nil {
		t.Fatal(err)
	}
	sig[5] ^= 0x40
	forged := bytes.Replace(last, []byte(ev.Checkpoint.Signature), []byte(base64.StdEncoding.EncodeToString(sig)), 1)
	lines[len(lines)-1] = forged
	if err := os.WriteFile(path, append(bytes.Join(lines, []byte("\n")), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestAuditVerifyJWKS(t *testing.T) {
	edS, ecS := newFakeTransitSigners(t)
	set := jwksJSON(t, jwkJSON(t, edS.kid, "EdDSA", edS.public()), jwkJSON(t, ecS.kid, "ES256", ecS.public()))
	onlyEC := jwksJSON(t, jwkJSON(t, ecS.kid, "ES256", ecS.public()))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/.well-known/jwks.json":
			_, _ = w.Write(set)
		case "/moved":
			http.Redirect(w, r, "/.well-known/jwks.json", http.StatusFound)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	dir := t.TempDir()
	setFile, onlyECFile := filepath.Join(dir, "jwks.json"), filepath.Join(dir, "only-ec.json")
	for p, b := range map[string][]byte{setFile: set, onlyECFile: onlyEC} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	type outcome struct {
		Exit1    bool   // "does NOT verify"
		Err      string // other error, substring
		Contains string // in stdout
	}
	for _, tc := range []struct {
		name   string
		signer *fakeTransitSigner
		forge  bool
		jwks   []string
		want   outcome
	}{
		{name: "ok/ed25519-jwks-url", signer: edS, jwks: []string{srv.URL + "/.well-known/jwks.json"}, want: outcome{Contains: "OK: the chain is intact"}},
		{name: "ok/es256-jwks-file", signer: ecS, jwks: []string{setFile}, want: outcome{Contains: "OK: the chain is intact"}},
		{name: "ok/two-jwks", signer: ecS, jwks: []string{onlyECFile, setFile}, want: outcome{Contains: "OK: the chain is intact"}},
		{name: "fail/forged-ed25519-checkpoint", signer: edS, forge: true, jwks: []string{setFile}, want: outcome{Exit1: true, Contains: "checkpoint signature does not verify with key cp-ed:1"}},
		{name: "fail/forged-es256-checkpoint", signer: ecS, forge: true, jwks: []string{setFile}, want: outcome{Exit1: true, Contains: "checkpoint signature does not verify with key cp-ec:2"}},
		{name: "fail/checkpoint-from-another-key", signer: edS, jwks: []string{onlyECFile}, want: outcome{Exit1: true, Contains: `checkpoint from unknown key "cp-ed:1"`}},
		{name: "fail/jwks-redirect", signer: edS, jwks: []string{srv.URL + "/moved"}, want: outcome{Err: "HTTP 302"}},
		{name: "fail/jwks-404", signer: edS, jwks: []string{srv.URL + "/nope"}, want: outcome{Err: "HTTP 404"}},
		{name: "fail/jwks-plain-http-remote", signer: edS, jwks: []string{"http://keytrail.example/.well-known/jwks.json"}, want: outcome{Err: "must be https"}},
		{name: "fail/jwks-file-missing", signer: edS, jwks: []string{filepath.Join(dir, "missing.json")}, want: outcome{Err: "audit verify: --jwks: open " + filepath.Join(dir, "missing.json") + ": no such file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, lines := writeSignedAudit(t, t.TempDir(), tc.signer)
			if tc.forge {
				forgeLastCheckpoint(t, path)
			}
			args := []string{"audit", "verify", "--require-checkpoint", "--exact"}
			for _, j := range tc.jwks {
				args = append(args, "--jwks", j)
			}
			stdout, _, err := runCLI(t, nil, append(args, path)...)
			var ee exitError
			got := outcome{Exit1: errors.As(err, &ee) && ee.code == 1}
			if err != nil && !got.Exit1 {
				got.Err = err.Error()
				if strings.Contains(got.Err, tc.want.Err) && tc.want.Err != "" {
					got.Err = tc.want.Err
				}
			}
			if tc.want.Contains != "" && strings.Contains(stdout, tc.want.Contains) {
				got.Contains = tc.want.Contains
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("keytrail %s = %v\n%s\nwant %+v (-want +got):\n%s", strings.Join(args, " "), err, stdout, tc.want, diff)
			}
			if tc.forge && !strings.Contains(stdout, fmt.Sprintf("%s:%d", path, lines)) {
				t.Errorf("verify output does not name the forged line %d:\n%s", lines, stdout)
			}
		})
	}
}

func TestConfigCheckpointTransitKey(t *testing.T) {
	dir := t.TempDir()
	pol := writeFile(t, dir, "p.yaml", "version: 1\n")
	keyFile := writeFile(t, dir, "cp.key", "not read by validation")
	base := "public_url: http://127.0.0.1:7700\npolicy: " + pol + "\nvault: {address: http://127.0.0.1:8200}\n"
	for _, tc := range []struct {
		name    string
		audit   string
		want    string // the transit key loaded
		wantErr string
	}{
		{name: "ok/transit-key", audit: "{file: a.jsonl, checkpoint_transit_key: keytrail-ed25519}", want: "keytrail-ed25519"},
		{name: "fail/with-key-file", audit: "{file: a.jsonl, checkpoint_transit_key: k, checkpoint_key_file: " + keyFile + "}",
			wantErr: "audit.checkpoint_transit_key: cannot be combined with audit.checkpoint_key_file"},
		{name: "fail/path-in-name", audit: "{file: a.jsonl, checkpoint_transit_key: 'other/keys/k'}", wantErr: "audit.checkpoint_transit_key: must be a transit key name"},
		{name: "fail/version-in-name", audit: "{file: a.jsonl, checkpoint_transit_key: 'k:1'}", wantErr: "audit.checkpoint_transit_key: must be a transit key name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "config.yaml", base+"audit: "+tc.audit+"\n")
			cfg, err := LoadConfig(p, func(string) string { return "" })
			got, gotErr := "", ""
			if cfg != nil {
				got = cfg.Audit.CheckpointTransitKey
			}
			if err != nil && strings.Contains(err.Error(), tc.wantErr) {
				gotErr = tc.wantErr
			} else if err != nil {
				gotErr = err.Error()
			}
			if diff := cmp.Diff([2]string{tc.want, tc.wantErr}, [2]string{got, gotErr}); diff != "" {
				t.Errorf("LoadConfig(audit: %s) = %q, %v; want %q, error containing %q", tc.audit, got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// TestJWKSErrorsShowNoUserinfo: a --jwks URL's user info (basic auth for a
// front proxy) was quoted raw by the errors of a JWKS that could not be had
// or read ('jwks http://user:password@host/...: HTTP 404', the plain-http
// refusal, a set that does not parse) and with the name shown by net/http's
// error for a failed request. No user info is shown now (nor a query or a
// fragment); the URL's scheme, host and path still are.
func TestJWKSErrorsShowNoUserinfo(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/garbled" {
			_, _ = w.Write([]byte("not json"))
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	closed := closedLoopbackAddrs(t, 1)[0]
	const ui = "USER-MARKER:PW-MARKER@"
	for _, c := range []struct{ src, want string }{
		{"http://" + ui + host + "/nope?t=Q-MARKER", "jwks http://" + host + "/nope: HTTP 404"},
		{"http://USER-MARKER@" + host + "/nope", "jwks http://" + host + "/nope: HTTP 404"},
		{"http://" + ui + host + "/garbled", "jwks http://" + host + "/garbled: not a JSON Web Key Set"},
		{"http://" + ui + "keytrail.example/.well-known/jwks.json", "jwks http://keytrail.example/.well-known/jwks.json: must be https"},
		{"http://" + ui + closed + "/jwks.json", "http://" + closed + "/jwks.json"},
		{"https://" + ui + "[::1/jwks.json", "not a URL"},
	} {
		_, err := jwksVerifyFunc(context.Background(), c.src)
		if err == nil {
			t.Fatalf("jwksVerifyFunc(%q) succeeded", c.src)
		}
		if got := err.Error(); strings.Contains(got, "MARKER") || !strings.Contains(got, c.want) {
			t.Errorf("jwksVerifyFunc(%q) = %q, want it to say %q and no user info or query", c.src, got, c.want)
		}
	}
}
