package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/e2e/harness"
)

// TestStartEventBeforeBackgroundEvents: the background loops that write
// audit events (clock watch, revocation worker, reconciler) start once the
// start event is durable. They started before it: the clock watch checks
// Vault's clock at once, and with Vault's clock 30 s ahead its clock_skew
// event came before the start event, in the lines no verified checkpoint
// covers before that event, which records none (the sink adopted nothing):
// audit verify warned of lines a broker adopted (unrecorded_resumed) on an
// honest log, at every start of a broker whose clock differs from Vault's.
// Vault is behind a proxy that sets sys/health's Date 30 s ahead and holds
// the read of the token role (vault.token_role, checked before the start
// event) until a clock_skew event is in the file, at most 3 s (the whole 3 s
// now: the clock watch starts after the start event), so that the old order
// shows every time.
func TestStartEventBeforeBackgroundEvents(t *testing.T) {
	vp := harness.StartVault(t)
	sec, err := vp.Client.Auth().Token().Create(&vaultapi.TokenCreateRequest{Policies: []string{"root"}, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vp.Client.Logical().Write("auth/token/roles/keytrail", map[string]any{"orphan": true}); err != nil {
		t.Fatal(err)
	}
	target, err := url.Parse(vp.Addr)
	if err != nil {
		t.Fatal(err)
	}
	auditPath := filepath.Join(t.TempDir(), "audit.jsonl")
	inFile := func(s string) bool {
		b, _ := os.ReadFile(auditPath)
		return bytes.Contains(b, []byte(s))
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.URL.Path == "/v1/sys/health" {
			resp.Header.Set("Date", time.Now().Add(30*time.Second).UTC().Format(http.TimeFormat))
		}
		return nil
	}
	px := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/auth/token/roles/") {
			for deadline := time.Now().Add(3 * time.Second); !inFile(`"clock_skew"`) && time.Now().Before(deadline); {
				<-time.After(20 * time.Millisecond)
			}
		}
		rp.ServeHTTP(w, r)
	}))
	defer px.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, errc := startTestServer(t, ctx, px.URL, sec.Auth.ClientToken, func(c *Config) {
		c.Audit.File, c.Vault.TokenRole = auditPath, "keytrail"
		c.Vault.Timeout = duration(30 * time.Second) // the held read
	})
	deadline := time.Now().Add(30 * time.Second)
	for !inFile(`"clock_skew"`) {
		if time.Now().After(deadline) {
			t.Fatal("no clock_skew event within 30 s of the start with Vault's clock 30 s ahead")
		}
		<-time.After(50 * time.Millisecond)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("runServer() = %v", err)
	}

	lines := bytes.Split(bytes.TrimSpace(mustRead(t, auditPath)), []byte("\n"))
	if len(lines) == 0 || !bytes.Contains(lines[0], []byte(`"trigger":"start"`)) {
		t.Errorf("the first audit line is not the start event:\n%s", bytes.Join(lines, []byte("\n")))
	}
	out, _, err := runCLI(t, nil, "audit", "verify", "--key", auditPath+".checkpoint.pub", "--require-checkpoint", "--exact", auditPath)
	if err != nil || strings.Contains(out, "WARNING") {
		t.Errorf("audit verify of an honest broker's log = %v, want success with no warning\n%s", err, out)
	}
}
