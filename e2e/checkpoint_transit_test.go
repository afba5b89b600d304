package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/e2e/harness"
)

// TestCheckpointTransit: a broker signs its audit checkpoints with the Vault
// transit key keytrail-ed25519 and serves that key in its JWKS; after
// shutdown `keytrail audit verify --require-checkpoint --jwks` accepts the
// log with the JWKS saved while the broker ran, and rejects a forged
// checkpoint signature and a JWKS without the checkpoint key.
func TestCheckpointTransit(t *testing.T) {
	env := startStack(t, stackOptions{checkpointTransitKey: harness.VaultEd25519Key})
	tok := env.issuer.token(t, "system:serviceaccount:payments:api", map[string]any{"namespace": "payments"})
	for range 3 {
		env.issue(t, tok, "payments-vault", nil)
	}

	// The JWKS, saved before the broker stops: the JWT grant's key and the
	// checkpoint key.
	resp, err := http.Get(env.brokerURL + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET jwks = %d, %v", resp.StatusCode, err)
	}
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(jwks, &set); err != nil {
		t.Fatalf("jwks: %v\n%s", err, jwks)
	}
	var kids []string
	var onlyOther []map[string]any
	for _, k := range set.Keys {
		kid, _ := k["kid"].(string)
		kids = append(kids, kid+" "+k["kty"].(string))
		if !strings.HasPrefix(kid, harness.VaultEd25519Key+":") {
			onlyOther = append(onlyOther, k)
		}
	}
	slices.Sort(kids)
	if diff := cmp.Diff([]string{harness.VaultEd25519Key + ":1 OKP", harness.VaultSigningKey + ":1 EC"}, kids); diff != "" {
		t.Errorf("JWKS kids (-want +got):\n%s", diff)
	}
	jwksPath := filepath.Join(env.dir, "jwks.json")
	otherPath := filepath.Join(env.dir, "jwks-without-checkpoint-key.json")
	other, _ := json.Marshal(map[string]any{"keys": onlyOther})
	for p, b := range map[string][]byte{jwksPath: jwks, otherPath: other} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	if err := env.broker.Stop(); err != nil {
		t.Fatalf("keytrail exit after SIGTERM = %v, want 0\n%s", err, env.broker.Logs())
	}
	evs := readAudit(t, env.auditPath)
	last := evs[len(evs)-1]
	if last.Type != audit.TypeCheckpoint || last.Checkpoint == nil {
		t.Fatalf("last audit line after shutdown is %q, want checkpoint", last.Type)
	}
	got := [2]string{last.Checkpoint.KeyID, last.Checkpoint.Alg}
	if want := [2]string{harness.VaultEd25519Key + ":1", audit.AlgVaultTransit}; got != want {
		t.Errorf("final checkpoint key_id, alg = %v, want %v", got, want)
	}

	bin := harness.KeytrailBinary(t)
	verify := func(jwksFile, auditFile string) (string, error) {
		out, err := exec.Command(bin, "audit", "verify", "--require-checkpoint", "--exact", "--jwks", jwksFile, auditFile).CombinedOutput()
		return string(out), err
	}

	t.Run("ok/verifies-with-saved-jwks", func(t *testing.T) {
		out, err := verify(jwksPath, env.auditPath)
		if err != nil || !strings.Contains(out, "OK: the chain is intact") || strings.Contains(out, " 0 verified checkpoint") {
			t.Errorf("audit verify --jwks = %v, want OK with verified checkpoints\n%s", err, out)
		}
	})

	t.Run("fail/forged-checkpoint-signature", func(t *testing.T) {
		raw, err := os.ReadFile(env.auditPath)
		if err != nil {
			t.Fatal(err)
		}
		lines := bytes.Split(bytes.TrimSuffix(raw, []byte("\n")), []byte("\n"))
		sig, err := base64.StdEncoding.DecodeString(last.Checkpoint.Signature)
		if err != nil {
			t.Fatal(err)
		}
		sig[0] ^= 1
		// The last line is hashed by no later line: only its signature is
		// wrong.
		lines[len(lines)-1] = bytes.Replace(lines[len(lines)-1], []byte(last.Checkpoint.Signature), []byte(base64.StdEncoding.EncodeToString(sig)), 1)
		forged := filepath.Join(t.TempDir(), "audit.jsonl")
		if err := os.WriteFile(forged, append(bytes.Join(lines, []byte("\n")), '\n'), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := verify(jwksPath, forged)
		wantLine := fmt.Sprintf("%s:%d", forged, len(lines))
		if err == nil || !strings.Contains(out, wantLine) || !strings.Contains(out, "checkpoint signature does not verify with key "+harness.VaultEd25519Key+":1") {
			t.Errorf("audit verify of a forged checkpoint = %v, want exit 1 naming %s and the bad signature\n%s", err, wantLine, out)
		}
	})

	t.Run("fail/jwks-without-the-checkpoint-key", func(t *testing.T) {
		out, err := verify(otherPath, env.auditPath)
		if err == nil || !strings.Contains(out, `checkpoint from unknown key "`+harness.VaultEd25519Key+`:1"`) {
			t.Errorf("audit verify with another key only = %v, want exit 1 for an unknown key\n%s", err, out)
		}
	})
}
