package vault_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"
	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/adapters/auditfile"
	vault "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/e2e/harness"
	"github.com/keytrail/keytrail/policies"
)

// testRealVaultCheckpoints runs inside TestRealVault (one Vault per
// package): it writes audit files through auditfile with checkpoints signed
// by each transit key, and verifies them with keys read back from the JWKS
// the broker would serve for TransitKeys.
func testRealVaultCheckpoints(ctx context.Context, t *testing.T, bc *vaultapi.Client) {
	tk, err := vault.NewTransitKeys(vault.TransitKeysOptions{Client: bc, Keys: []string{harness.VaultEd25519Key, harness.VaultSigningKey}})
	if err != nil {
		t.Fatal(err)
	}
	pubs, err := tk.PublicKeys(ctx)
	if err != nil {
		t.Fatalf("PublicKeys() = %v", err)
	}
	all := jwksRoundTrip(t, pubs)
	verifyAll, err := vault.CheckpointVerifyFunc(all)
	if err != nil {
		t.Fatalf("CheckpointVerifyFunc(JWKS) = %v", err)
	}

	for _, key := range []string{harness.VaultEd25519Key, harness.VaultSigningKey} {
		t.Run("ok/checkpoints-signed-by-"+key, func(t *testing.T) {
			s, err := vault.NewTransitCheckpointSigner(vault.TransitCheckpointSignerOptions{Client: bc, Key: key})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Load(ctx); err != nil {
				t.Fatalf("Load() = %v", err)
			}
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			sink, err := auditfile.Open(auditfile.Options{Path: path, Signer: s, CheckpointEvery: 3, NoFsync: true})
			if err != nil {
				t.Fatal(err)
			}
			for i := range 7 {
				if err := sink.Append(ctx, &audit.Event{Type: audit.TypeUse, RequestID: fmt.Sprint("req_", i)}); err != nil {
					t.Fatalf("Append(#%d) = %v", i, err)
				}
			}
			if err := sink.Close(); err != nil {
				t.Fatalf("Close() = %v", err)
			}

			var cps []string
			for _, ev := range readEvents(t, path) {
				if ev.Checkpoint != nil {
					cps = append(cps, ev.Checkpoint.KeyID+" "+ev.Checkpoint.Alg)
				}
			}
			want := key + ":1 " + audit.AlgVaultTransit
			if diff := cmp.Diff([]string{want, want, want}, cps); diff != "" {
				t.Errorf("checkpoints (key_id alg) after 7 events, every 3, and Close (-want +got):\n%s", diff)
			}

			rep, err := audit.VerifyFiles([]string{path}, audit.VerifyOptions{VerifyFunc: verifyAll, RequireCheckpoint: true})
			if err != nil || !rep.OK() || len(rep.Chains) != 1 || rep.Chains[0].Checkpoints != 3 {
				t.Errorf("VerifyFiles(JWKS keys) = %+v, %v; want OK with 3 verified checkpoints", rep, err)
			}

			// Only the other key: every checkpoint is from an unknown key.
			var others []broker.PublicKey
			for _, k := range all {
				if !strings.HasPrefix(k.KID, key+":") {
					others = append(others, k)
				}
			}
			verifyOthers, err := vault.CheckpointVerifyFunc(others)
			if err != nil {
				t.Fatal(err)
			}
			rep, err = audit.VerifyFiles([]string{path}, audit.VerifyOptions{VerifyFunc: verifyOthers})
			if rep == nil || rep.OK() || len(rep.Problems) == 0 || !strings.Contains(rep.Problems[0].Why, "unknown key") || rep.Problems[0].Line != 4 {
				t.Errorf("VerifyFiles(other key only) = %+v, %v; want the checkpoint on line 4 from an unknown key", rep, err)
			}
		})
	}
}

// jwksRoundTrip encodes keys as the broker's JWKS handler does and reads
// them back, so the test checks what a verifier gets from the JWKS.
func jwksRoundTrip(t *testing.T, keys []broker.PublicKey) []broker.PublicKey {
	t.Helper()
	set := jwkset.JWKSMarshal{}
	for _, k := range keys {
		jwk, err := jwkset.NewJWKFromKey(k.Key, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: k.KID, ALG: jwkset.ALG(k.Alg), USE: jwkset.UseSig}})
		if err != nil {
			t.Fatal(err)
		}
		set.Keys = append(set.Keys, jwk.Marshal())
	}
	raw, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	var back struct{ Keys []json.RawMessage }
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	var out []broker.PublicKey
	for _, r := range back.Keys {
		jwk, err := jwkset.NewJWKFromRawJSON(r, jwkset.JWKMarshalOptions{}, jwkset.JWKValidateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		m := jwk.Marshal()
		out = append(out, broker.PublicKey{KID: m.KID, Alg: string(m.ALG), Key: jwk.Key()})
	}
	if len(out) != len(keys) {
		t.Fatalf("JWKS round trip: %d keys, want %d", len(out), len(keys))
	}
	return out
}

func readEvents(t *testing.T, path string) []*audit.Event {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []*audit.Event
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		ev, err := audit.ParseLine(sc.Bytes())
		if err != nil {
			t.Fatalf("ParseLine(%s) = %v", sc.Text(), err)
		}
		out = append(out, ev)
	}
	return out
}

// testRealVaultDomainSeparation runs inside TestRealVault: `audit verify
// --jwks` trusts every key of the broker's JWKS for checkpoints, JWT keys
// included, and a checkpoint transit key may sign JWTs too. With one transit
// key signing both, neither signature may pass for the other: a workload's
// JWT signature is not a checkpoint signature, and a checkpoint signature
// does not make a JWT, because a checkpoint's signing input
// (CheckpointMessage) opens with CheckpointDomainV2 (CheckpointDomain for
// version 1) and a newline, which no JWS signing input can contain.
func testRealVaultDomainSeparation(ctx context.Context, t *testing.T, bc *vaultapi.Client) {
	tk, err := vault.NewTransitKeys(vault.TransitKeysOptions{Client: bc, Keys: []string{harness.VaultEd25519Key, harness.VaultSigningKey}})
	if err != nil {
		t.Fatal(err)
	}
	pubs, err := tk.PublicKeys(ctx)
	if err != nil {
		t.Fatalf("PublicKeys() = %v", err)
	}
	served := jwksRoundTrip(t, pubs)
	verify, err := vault.CheckpointVerifyFunc(served)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ key, alg string }{{harness.VaultEd25519Key, "EdDSA"}, {harness.VaultSigningKey, "ES256"}} {
		t.Run(tc.alg, func(t *testing.T) {
			m, err := vault.NewJWTMinter(vault.JWTMinterOptions{Client: bc, PublicURL: "https://keytrail.test"})
			if err != nil {
				t.Fatal(err)
			}
			cred, err := m.Mint(ctx, broker.MintRequest{
				IssuanceID: "iss_01JDOMAIN", Workload: "orders-client", Owner: "team-orders", SessionID: "ses_d",
				Grant: policies.Grant{Name: "orders-jwt", Kind: broker.KindJWT, JWT: &policies.JWTGrant{Audience: "orders-api", TransitKey: tc.key}},
				TTL:   time.Minute,
			})
			if err != nil {
				t.Fatalf("Mint() = %v", err)
			}
			cut := strings.LastIndexByte(cred.AccessToken, '.')
			jwtInput, jwtSigB64 := cred.AccessToken[:cut], cred.AccessToken[cut+1:]
			jwtSig, err := base64.RawURLEncoding.DecodeString(jwtSigB64)
			if err != nil {
				t.Fatal(err)
			}
			jwtKID, _ := cred.Fields["kid"].(string)

			s, err := vault.NewTransitCheckpointSigner(vault.TransitCheckpointSignerOptions{Client: bc, Key: tc.key})
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			sink, err := auditfile.Open(auditfile.Options{Path: path, Signer: s, CheckpointEvery: 1000, NoFsync: true})
			if err != nil {
				t.Fatal(err)
			}
			for i := range 2 {
				if err := sink.Append(ctx, &audit.Event{Type: audit.TypeUse, RequestID: fmt.Sprint("req_", i)}); err != nil {
					t.Fatalf("Append(#%d) = %v", i, err)
				}
			}
			if err := sink.Close(); err != nil {
				t.Fatalf("Close() = %v", err)
			}
			evs := readEvents(t, path)
			last := evs[len(evs)-1]
			if last.Checkpoint == nil || last.Checkpoint.KeyID != jwtKID {
				t.Fatalf("last line = %+v, want a checkpoint by %s, the JWT's key", last, jwtKID)
			}
			cp := last.Checkpoint
			cpMsg, err := audit.CheckpointMessage(last)
			if err != nil {
				t.Fatal(err)
			}
			cpSig, err := base64.StdEncoding.DecodeString(cp.Signature)
			if err != nil {
				t.Fatal(err)
			}
			// The signer checks its own checkpoint with the key Vault
			// gave (the sink does at Open): a reopen adopts no line.
			if known, ok := s.VerifyOwn(ctx, cp.KeyID, cpMsg, cpSig); !known || !ok {
				t.Errorf("VerifyOwn(its checkpoint) = %v, %v; want true, true", known, ok)
			}
			if known, ok := s.VerifyOwn(ctx, cp.KeyID, cpMsg, jwtSig); !known || ok {
				t.Errorf("VerifyOwn(checkpoint, the JWT's signature) = %v, %v; want true, false", known, ok)
			}
			sink, err = auditfile.Open(auditfile.Options{Path: path, Signer: s, CheckpointEvery: 1000, NoFsync: true})
			if err != nil {
				t.Fatal(err)
			}
			if r := sink.UnsignedResumed(); r != nil {
				t.Errorf("UnsignedResumed() after a clean stop = %+v, want nil", r)
			}
			if err := sink.Close(); err != nil {
				t.Fatal(err)
			}

			// Both signatures are good over their own message, with the
			// same key from the same JWKS: only the messages differ.
			if err := verify(jwtKID, audit.AlgVaultTransit, []byte(jwtInput), jwtSig); err != nil {
				t.Fatalf("verify(JWT signing input, JWT signature) = %v, want nil: the JWKS key must be the JWT's", err)
			}
			if err := verify(cp.KeyID, cp.Alg, cpMsg, cpSig); err != nil {
				t.Fatalf("verify(checkpoint) = %v, want nil", err)
			}

			t.Run("fail/jwt-signature-as-checkpoint", func(t *testing.T) {
				raw, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				forged := bytes.Replace(raw, []byte(`"signature":"`+cp.Signature+`"`), []byte(`"signature":"`+base64.StdEncoding.EncodeToString(jwtSig)+`"`), 1)
				if bytes.Equal(forged, raw) {
					t.Fatal("the checkpoint signature was not found in the file")
				}
				fp := filepath.Join(t.TempDir(), "audit.jsonl")
				if err := os.WriteFile(fp, forged, 0o600); err != nil {
					t.Fatal(err)
				}
				rep, err := audit.VerifyFiles([]string{fp}, audit.VerifyOptions{VerifyFunc: verify, RequireCheckpoint: true})
				if err == nil || rep == nil || rep.OK() || len(rep.Problems) == 0 || rep.Problems[0].Line != len(evs) || !strings.Contains(rep.Problems[0].Why, "does not verify") {
					t.Errorf("VerifyFiles(checkpoint carrying the JWT's signature) = %+v, %v; want line %d: does not verify", rep, err, len(evs))
				}
			})

			t.Run("fail/checkpoint-signature-as-jwt", func(t *testing.T) {
				if !bytes.ContainsFunc(cpMsg, func(r rune) bool { return !isJWSChar(r) }) {
					t.Fatalf("checkpoint signing input %q is all JWS compact characters: a JWS could sign it", cpMsg)
				}
				if strings.HasPrefix(jwtInput, audit.CheckpointDomain) || strings.ContainsFunc(jwtInput, func(r rune) bool { return !isJWSChar(r) }) {
					t.Fatalf("JWT signing input %q is not plain JWS compact characters", jwtInput)
				}
				keyfunc := func(tok *jwt.Token) (any, error) {
					for _, k := range served {
						if k.KID == tok.Header["kid"] && k.Alg == tok.Method.Alg() {
							return k.Key, nil
						}
					}
					return nil, fmt.Errorf("no key %v", tok.Header["kid"])
				}
				opts := []jwt.ParserOption{jwt.WithValidMethods([]string{tc.alg}), jwt.WithIssuer("https://keytrail.test"), jwt.WithExpirationRequired()}
				if _, err := jwt.Parse(cred.AccessToken, keyfunc, opts...); err != nil {
					t.Fatalf("the minted JWT does not verify: %v", err)
				}
				cpSigB64 := base64.RawURLEncoding.EncodeToString(cpSig)
				for name, tok := range map[string]string{
					"the checkpoint input as the signing input": string(cpMsg) + "." + cpSigB64,
					"the JWT with the checkpoint's signature":   jwtInput + "." + cpSigB64,
				} {
					if _, err := jwt.Parse(tok, keyfunc, opts...); err == nil {
						t.Errorf("jwt.Parse(%s) = nil error, want a rejection", name)
					}
				}
			})
		})
	}
}

// isJWSChar reports whether r may appear in a JWS compact signing input:
// the base64url alphabet and the dot.
func isJWSChar(r rune) bool {
	return r == '.' || r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')
}
