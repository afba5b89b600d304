package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker/client"
)

// TestExecDropsIdentityTokenEnv: with --identity-token-env VAR, VAR holds
// the platform's long-lived identity token, which the broker exchanges for
// the short-lived credential CMD is given. CMD must get the credential,
// not the identity it was exchanged for (Vault Agent's and SPIRE's helpers
// do not pass theirs on): VAR is left out of CMD's environment, the rest
// of keytrail's environment is not. Before, CMD inherited VAR.
func TestExecDropsIdentityTokenEnv(t *testing.T) {
	_, addr := newFakeTokenBroker(t)
	t.Setenv("KT_TEST_IDENTITY", "identity.jwt")
	t.Setenv("KT_TEST_KEPT", "kept")
	getenv := func(k string) string {
		if k == "KEYTRAIL_ADDR" {
			return addr
		}
		return os.Getenv(k)
	}
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"exec", "--quiet", "--identity-token-env", "KT_TEST_IDENTITY", "--grant", "payments-db", "--env", "T",
		"--", "sh", "-c", `printf '%s|%s|%s' "${KT_TEST_IDENTITY-unset}" "$KT_TEST_KEPT" "$T"`}, getenv, &out, &errb)
	if err != nil {
		t.Fatalf("exec = %v\nstderr: %s", err, errb.String())
	}
	if got, want := out.String(), "unset|kept|db-token"; got != want {
		t.Errorf("CMD saw $KT_TEST_IDENTITY|$KT_TEST_KEPT|$T = %q, want %q", got, want)
	}

	// Named by --env too, VAR is CMD's credential, as asked.
	out.Reset()
	err = run(context.Background(), []string{"exec", "--quiet", "--identity-token-env", "KT_TEST_IDENTITY", "--grant", "payments-db", "--env", "KT_TEST_IDENTITY",
		"--", "sh", "-c", `printf '%s' "${KT_TEST_IDENTITY-unset}"`}, getenv, &out, &errb)
	if err != nil || out.String() != "db-token" {
		t.Errorf("exec --env KT_TEST_IDENTITY = %v, CMD saw %q, want db-token\nstderr: %s", err, out.String(), errb.String())
	}
}

// TestExecEnvGivenTwice: --env A=x --env A=y set A twice, and the last one
// won without a word: a usage error naming A, before the broker is asked.
func TestExecEnvGivenTwice(t *testing.T) {
	f, addr := newFakeTokenBroker(t)
	tokenFile := filepath.Join(t.TempDir(), "identity")
	if err := os.WriteFile(tokenFile, []byte("identity.jwt"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, envs := range [][]string{
		{"--env", "A=username", "--env", "A=password"},
		{"--env", "A", "--env", "A"},
		{"--env", "A=payments-db:username", "--env", "B", "--env", "A=password"},
	} {
		args := append([]string{"exec", "--quiet", "--identity-token-file", tokenFile, "--grant", "payments-db"}, envs...)
		_, _, err := runCmd(t, context.Background(), addr, append(args, "--", "true")...)
		var ee exitError
		if !errors.As(err, &ee) || ee.code != exitUsage || !strings.Contains(ee.msg, "--env A given twice") {
			t.Errorf("exec %v = %v, want a usage error saying --env A given twice", envs, err)
		}
	}
	f.mu.Lock()
	n := len(f.subjects)
	f.mu.Unlock()
	if n != 0 {
		t.Errorf("the broker was asked %d times, want 0 (usage errors are found first)", n)
	}
}

// TestExecGitHubActionsKeepsRequestEnv: with --github-actions, unlike
// --identity-token-env, CMD keeps ACTIONS_ID_TOKEN_REQUEST_URL and
// ACTIONS_ID_TOKEN_REQUEST_TOKEN. They are not an identity token but the
// runner's means to ask for one, which every step of the job has anyway
// (CMD is a build step's command), and tools CMD may run need them (npm
// publish --provenance, cosign's keyless signing): leaving them out would
// break those and protect nothing. The choice is stated in exec --help.
func TestExecGitHubActionsKeepsRequestEnv(t *testing.T) {
	_, addr := newFakeTokenBroker(t)
	gh := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"count":1,"value":"gh.identity.jwt"}`)
	}))
	t.Cleanup(gh.Close)
	// CMD's environment is keytrail's own (os.Environ), getenv's the flags'.
	t.Setenv(client.EnvGitHubRequestURL, gh.URL+"/idtoken?api-version=2.0")
	t.Setenv(client.EnvGitHubRequestToken, "request-token")
	getenv := func(k string) string {
		if k == "KEYTRAIL_ADDR" {
			return addr
		}
		return os.Getenv(k)
	}
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"exec", "--quiet", "--github-actions", "--grant", "payments-db", "--env", "T",
		"--", "sh", "-c", `printf '%s|%s|%s' "${ACTIONS_ID_TOKEN_REQUEST_URL:+set}" "${ACTIONS_ID_TOKEN_REQUEST_TOKEN-unset}" "$T"`}, getenv, &out, &errb)
	if err != nil {
		t.Fatalf("exec = %v\nstderr: %s", err, errb.String())
	}
	if got, want := out.String(), "set|request-token|db-token"; got != want {
		t.Errorf("CMD saw URL|TOKEN|$T = %q, want %q", got, want)
	}
}
