package vault_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/MicahParks/jwkset"
	"github.com/google/go-cmp/cmp"
	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/adapters/auditfile"
	vault "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/e2e/harness"
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
