package vault_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	vault "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/e2e/harness"
)

// heldLogin, once armed, sends an AppRole login to Vault at once (Vault
// makes the token whatever the client does next) but holds Vault's answer
// until released; a request whose context has ended by then fails, as it
// does when the answer comes just after the cancel.
type heldLogin struct {
	next     http.RoundTripper
	armed    atomic.Bool
	accessor chan string   // the token Vault made
	release  chan struct{} // closed: hand the answer over
}

func (h *heldLogin) RoundTrip(r *http.Request) (*http.Response, error) {
	if !h.armed.Load() || r.URL.Path != "/v1/auth/approle/login" {
		return h.next.RoundTrip(r)
	}
	resp, err := h.next.RoundTrip(r.Clone(context.WithoutCancel(r.Context())))
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	var sec vaultapi.Secret
	if err := json.Unmarshal(body, &sec); err != nil || sec.Auth == nil {
		return nil, errors.New("approle login answer without auth block")
	}
	h.accessor <- sec.Auth.Accessor
	select {
	case <-r.Context().Done():
		return nil, r.Context().Err()
	case <-h.release:
	}
	// Released after the cancel: a request whose context the cancel
	// ended gets no answer.
	if err := r.Context().Err(); err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, nil
}

// approleLoginClient enables AppRole on v with role (1h tokens, policy
// default) and returns its role id and secret id files and a client of v
// whose requests go through gate.
func approleLoginClient(t *testing.T, ctx context.Context, v *harness.Vault, role string, gate *heldLogin) (roleFile, secretFile string, c *vaultapi.Client) {
	t.Helper()
	root := v.Client
	if err := root.Sys().EnableAuthWithOptionsWithContext(ctx, "approle", &vaultapi.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatal(err)
	}
	writeVault(t, ctx, root, "auth/approle/role/"+role, map[string]any{"token_ttl": "1h", "token_policies": []string{"default"}})
	rid, err := root.Logical().ReadWithContext(ctx, "auth/approle/role/"+role+"/role-id")
	if err != nil {
		t.Fatal(err)
	}
	sid, err := root.Logical().WriteWithContext(ctx, "auth/approle/role/"+role+"/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	roleFile = writeLoginFile(t, dir, "role-id", rid.Data["role_id"].(string))
	secretFile = writeLoginFile(t, dir, "secret-id", sid.Data["secret_id"].(string))
	cfg := vaultapi.DefaultConfig()
	cfg.Address = v.Addr
	cfg.MaxRetries = 0
	cfg.Timeout = time.Minute
	cfg.HttpClient = &http.Client{Transport: gate}
	c, err = vaultapi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(placeholderToken)
	return roleFile, secretFile, c
}

// startRelogin logs in (AppRole, through gate), revokes the token Start
// got, arms gate and runs Run, whose first renewal is then refused and
// which logs in again at once. It returns the Login, Run's stop and its
// result.
func startRelogin(t *testing.T, ctx context.Context, v *harness.Vault, gate *heldLogin, logs io.Writer) (*vault.Login, context.CancelFunc, <-chan error) {
	t.Helper()
	root := v.Client
	roleFile, secretFile, c := approleLoginClient(t, ctx, v, "relogin", gate)
	l, err := vault.NewLogin(vault.LoginOptions{
		Client: c, Method: vault.LoginAppRole, RoleIDFile: roleFile, SecretIDFile: secretFile,
		// Run's waits (the backoff before a re-login) end at once.
		After: func(time.Duration) <-chan time.Time {
			ch := make(chan time.Time, 1)
			ch <- time.Now()
			return ch
		},
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := root.Auth().Token().RevokeOrphanWithContext(ctx, c.Token()); err != nil {
		t.Fatal(err)
	}
	if n := approleTokens(t, ctx, root, "relogin"); n != 0 {
		t.Fatalf("%d tokens of the approle role before the re-login, want 0", n)
	}
	gate.armed.Store(true)
	runCtx, stop := context.WithCancel(ctx)
	t.Cleanup(stop)
	ran := make(chan error, 1)
	go func() { ran <- l.Run(runCtx) }()
	return l, stop, ran
}

// TestRealVaultReloginStoppedAsVaultAnswers: Run's loop stopped while the
// answer to its re-login is on its way (Vault has made the token) left
// that token valid until its TTL: the login's request was cut off by the
// loop's cancel, so nobody knew the token, and nobody revoked it (the
// server's hard exit stops the loop, then revokes the token the broker
// holds: the old one). Now the login in flight is let finish (bounded),
// and the token it got is revoked, not used.
func TestRealVaultReloginStoppedAsVaultAnswers(t *testing.T) {
	v := harness.StartVault(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root := v.Client
	gate := &heldLogin{next: http.DefaultTransport, accessor: make(chan string, 1), release: make(chan struct{})}
	var logs bytes.Buffer
	l, stop, ran := startRelogin(t, ctx, v, gate, &logs)
	var accessor string
	select {
	case accessor = <-gate.accessor:
	case err := <-ran:
		t.Fatalf("Run() = %v before its re-login reached Vault", err)
	case <-ctx.Done():
		t.Fatal("no re-login reached Vault")
	}
	stop() // the loop is stopped as Vault's answer is on its way
	close(gate.release)
	select {
	case err := <-ran:
		if err != nil {
			t.Errorf("Run() = %v, want nil", err)
		}
	case <-ctx.Done():
		t.Fatal("Run did not return once stopped")
	}

	if _, err := root.Auth().Token().LookupAccessorWithContext(ctx, accessor); err == nil {
		t.Errorf("the token the stopped re-login got (accessor %s) is still valid in Vault, want it revoked", accessor)
	}
	if n := approleTokens(t, ctx, root, "relogin"); n != 0 {
		t.Errorf("%d tokens of the approle role valid after the stopped re-login, want 0", n)
	}
	if st := l.Status(); st.RefusedRevokeFailures != 0 || st.Logins != 1 {
		t.Errorf("Status() = %+v, want 1 login (Start's) and no revoke failure", st)
	}
}

// TestRealVaultReloginStoppedVaultSilent: a re-login in flight whose
// answer does not come once the loop is stopped does not hold the stop
// beyond the grace the login has to finish: Run returns (the server waits
// only 5 s for it) and a WARN says a token may be left.
func TestRealVaultReloginStoppedVaultSilent(t *testing.T) {
	v := harness.StartVault(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	gate := &heldLogin{next: http.DefaultTransport, accessor: make(chan string, 1), release: make(chan struct{})}
	defer close(gate.release)
	var logs bytes.Buffer
	_, stop, ran := startRelogin(t, ctx, v, gate, &logs)
	select {
	case <-gate.accessor:
	case err := <-ran:
		t.Fatalf("Run() = %v before its re-login reached Vault", err)
	case <-ctx.Done():
		t.Fatal("no re-login reached Vault")
	}
	stop() // never released: Vault's answer does not come
	select {
	case err := <-ran:
		if err != nil {
			t.Errorf("Run() = %v, want nil", err)
		}
	case <-ctx.Done():
		t.Fatal("Run did not return once stopped, its re-login unanswered")
	}
	if want := "did not answer in time"; !strings.Contains(logs.String(), want) {
		t.Errorf("logs do not say %q:\n%s", want, logs.String())
	}
}
