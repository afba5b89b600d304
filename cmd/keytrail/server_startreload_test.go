package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/e2e/harness"
	"github.com/keytrail/keytrail/policies"
)

// TestPolicyChangedDuringStartupIsAuditedInOrder: the policy file watcher
// started in the middle of the start-up, before the start's policy_load
// event was written. A change of the policy files seen while the start-up
// still waited for Vault (here: the vault.token_role check) was reloaded
// then, its policy_load event (trigger file_change, the new hash) written,
// and the start-up went on to write the start's policy_load event with
// the hash of the policy it had read first: the audit log's last word was
// the old policy while the new one served every request. Now the watcher
// starts once the start's event is durable; the change is loaded after it,
// so the policy_load events are in the order the policies took effect.
//
// The start-up is held at the token role check until the watcher (2 s
// poll) has reloaded, or 6 s have passed: with the fix no reload comes
// then, and the test checks the order of what the audit log says.
func TestPolicyChangedDuringStartupIsAuditedInOrder(t *testing.T) {
	vp := harness.StartVault(t)
	const role = "keytrail-startreload"
	if _, err := vp.Client.Logical().Write("auth/token/roles/"+role, map[string]any{"orphan": true}); err != nil {
		t.Fatal(err)
	}
	target, err := url.Parse(vp.Addr)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	arrived, release := make(chan struct{}), make(chan struct{})
	var gate, opened sync.Once
	open := func() { opened.Do(func() { close(release) }) }
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/auth/token/roles/") {
			gate.Do(func() {
				close(arrived)
				select {
				case <-release:
				case <-r.Context().Done():
				}
			})
		}
		rp.ServeHTTP(w, r)
	}))
	defer front.Close()
	defer open()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(serverTestPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs brokertest.SyncBuffer
	readyc, errc := goServerLog(t, ctx, &logs, dir, pol, front.URL, vp.RootToken, func(c *Config) {
		c.Vault.TokenRole = role
		c.Vault.Timeout = duration(time.Minute) // longer than the hold below
		c.Log.Level = "info"
	})
	select {
	case <-arrived:
	case err := <-errc:
		t.Fatalf("server: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatalf("the start-up never checked the token role\n%s", logs.String())
	}
	// The start-up waits for Vault; the policy changes.
	old, err := policies.Load(pol)
	if err != nil {
		t.Fatal(err)
	}
	changed := serverTestPolicy + "\n# changed during the start-up\n"
	writeAtomically(t, pol, changed)
	want, err := policies.Load(pol)
	if err != nil {
		t.Fatal(err)
	}
	reloaded := func() bool { return strings.Contains(logs.String(), `msg="policy reloaded" why=file_change`) }
	for deadline := time.Now().Add(6 * time.Second); !reloaded() && time.Now().Before(deadline); {
		<-time.After(20 * time.Millisecond)
	}
	open()
	var base string
	select {
	case a := <-readyc:
		base = "http://" + a
	case err := <-errc:
		t.Fatalf("server: %v\n%s", err, logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("server did not start\n%s", logs.String())
	}
	waitMetric(t, base, `keytrail_policy_info{hash="`+want.Hash()+`"} 1`, "")
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("runServer() = %v\n%s", err, logs.String())
	}

	raw, err := os.ReadFile(filepath.Join(dir, "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var loads []string // trigger:hash of each policy_load event, in order
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var ev struct {
			Type    string `json:"type"`
			Details struct {
				Trigger string `json:"trigger"`
				Hash    string `json:"hash"`
			} `json:"details"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		if ev.Type == "policy_load" {
			loads = append(loads, ev.Details.Trigger+":"+ev.Details.Hash)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if wantLoads := []string{"start:" + old.Hash(), "file_change:" + want.Hash()}; !slices.Equal(loads, wantLoads) {
		t.Errorf("policy_load events (trigger:hash) %v, want %v: the start's, then the change's (the policy in force)", loads, wantLoads)
	}
}
