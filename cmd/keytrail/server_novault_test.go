package main

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServerVaultNotRunning: a broker started while nothing listens at its
// Vault address failed with the Vault client's error alone ('vault login:
// ... dial tcp 127.0.0.1:8299: connect: connection refused'), which does not
// say what to check. It now asks whether Vault runs at that address and
// names what set it: the config file's vault.address and its line, or
// VAULT_ADDR (it said "vault.address, or VAULT_ADDR" whichever it was); it
// exits 1 (a plain error), and never quotes the broker's Vault token.
func TestServerVaultNotRunning(t *testing.T) {
	addrs := closedLoopbackAddrs(t, 3) // distinct: all bound at once
	vaultAddr, envAddr := "http://"+addrs[0], "http://"+addrs[2]
	listen := addrs[1]
	dir := t.TempDir()
	pol := writeFile(t, dir, "p.yaml", "version: 1\n")
	cfg := writeFile(t, dir, "config.yaml", "listen: "+listen+"\npublic_url: http://"+listen+
		"\npolicy: "+pol+"\naudit: {file: "+dir+"/audit.jsonl}\nvault: {address: "+vaultAddr+"}\n")
	const token = "hvs.BROKER-TOKEN-MARKER-5"
	for _, tc := range []struct {
		name, vaultAddrEnv, want string
	}{
		{"from-file", "", "is Vault running at " + vaultAddr + " (from vault.address in " + cfg + ", line 5)?"},
		{"from-env", envAddr, "is Vault running at " + envAddr + " (from VAULT_ADDR)?"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var out, errb strings.Builder
			err := run(ctx, []string{"server", "--config", cfg}, func(k string) string {
				return map[string]string{"VAULT_TOKEN": token, "KEYTRAIL_RECONCILE": "off", "VAULT_ADDR": tc.vaultAddrEnv}[k]
			}, &out, &errb)
			if err == nil {
				t.Fatal("server started with no Vault at its address")
			}
			if c := exitCode(err); c != -1 && c != 1 {
				t.Errorf("exit %d, want 1", c)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("server = %q, want it to ask %q", err, tc.want)
			}
			if strings.Contains(err.Error()+out.String()+errb.String(), "BROKER-TOKEN-MARKER") {
				t.Errorf("the Vault token is quoted: %q (stderr %q)", err, errb.String())
			}
		})
	}
}

// TestServerVaultNotRunningHidesUserinfo: a vault.address with user info
// (basic auth for a front proxy, which the Vault adapter masks in its own
// errors) was quoted whole in the "is Vault running at ...?" hint, password
// included; then with the password masked but the username shown, in the
// hint and in the client's error before it (net/http's 'Get
// "http://user:***@host/..."'), though a username can be a token too. The
// message now names the address without any user info, with or without a
// password.
func TestServerVaultNotRunningHidesUserinfo(t *testing.T) {
	for _, c := range []struct{ name, userinfo string }{
		{"user-and-password", "USER-MARKER-6:PROXY-PW-MARKER-7"},
		{"user", "USER-MARKER-6"},
		{"user-and-empty-password", "USER-MARKER-6:"},
		{"escaped-user", "USER-MARKER-6%2Fci:PROXY-PW-MARKER-7"},
	} {
		userinfo := c.userinfo
		t.Run(c.name, func(t *testing.T) {
			addrs := closedLoopbackAddrs(t, 2) // distinct: both bound at once
			hostPort := addrs[0]
			listen := addrs[1]
			dir := t.TempDir()
			pol := writeFile(t, dir, "p.yaml", "version: 1\n")
			cfg := writeFile(t, dir, "config.yaml", "listen: "+listen+"\npublic_url: http://"+listen+
				"\npolicy: "+pol+"\naudit: {file: "+dir+"/audit.jsonl}\nvault: {address: \"http://"+userinfo+"@"+hostPort+"\"}\n")
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var out, errb strings.Builder
			err := run(ctx, []string{"server", "--config", cfg}, func(k string) string {
				return map[string]string{"VAULT_TOKEN": "hvs.x", "KEYTRAIL_RECONCILE": "off"}[k]
			}, &out, &errb)
			if err == nil {
				t.Fatal("server started with no Vault at its address")
			}
			if c := exitCode(err); c != -1 && c != 1 {
				t.Errorf("exit %d, want 1", c)
			}
			all := err.Error() + out.String() + errb.String()
			for _, secret := range []string{"PROXY-PW-MARKER", "USER-MARKER"} {
				if strings.Contains(all, secret) {
					t.Errorf("the Vault address's user info (%s) is quoted: %q (stderr %q)", secret, err, errb.String())
				}
			}
			want := "is Vault running at http://" + hostPort + " (from vault.address in " + cfg + ", line 5)?"
			if !strings.Contains(err.Error(), want) {
				t.Errorf("server = %q, want it to ask %q", err, want)
			}
			// The client's error is still there, without the user info.
			if !strings.Contains(err.Error(), "//"+hostPort+"/v1/") || !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("server = %q, want the client's refused request to %s", err, hostPort)
			}
		})
	}
}

// TestServerVaultRefusesLoginHidesUserinfo: when Vault (or its front
// proxy) answers the broker's login with an error, the message quoted
// vault/api's request URL with the address's password masked and its
// username shown ("URL: GET http://user:xxxxx@host/v1/auth/token/lookup-self"),
// or the whole user info when it had no password. No part of it is quoted
// now; the request is still named.
func TestServerVaultRefusesLoginHidesUserinfo(t *testing.T) {
	vault := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"errors":["permission denied"]}`))
	}))
	defer vault.Close()
	hostPort := strings.TrimPrefix(vault.URL, "http://")
	for _, c := range []struct{ name, userinfo string }{
		{"user-and-password", "USER-MARKER-6:PROXY-PW-MARKER-7"},
		{"user", "USER-MARKER-6"},
		{"escaped-user", "USER-MARKER-6%2Fci:PROXY-PW-MARKER-7"},
	} {
		userinfo := c.userinfo
		t.Run(c.name, func(t *testing.T) {
			listen := closedLoopbackAddrs(t, 1)[0]
			dir := t.TempDir()
			pol := writeFile(t, dir, "p.yaml", "version: 1\n")
			cfg := writeFile(t, dir, "config.yaml", "listen: "+listen+"\npublic_url: http://"+listen+
				"\npolicy: "+pol+"\naudit: {file: "+dir+"/audit.jsonl}\nvault: {address: \"http://"+userinfo+"@"+hostPort+"\"}\n")
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var out, errb strings.Builder
			err := run(ctx, []string{"server", "--config", cfg}, func(k string) string {
				return map[string]string{"VAULT_TOKEN": "hvs.x", "KEYTRAIL_RECONCILE": "off"}[k]
			}, &out, &errb)
			if err == nil {
				t.Fatal("server started though Vault refused its token")
			}
			all := err.Error() + out.String() + errb.String()
			for _, secret := range []string{"PROXY-PW-MARKER", "USER-MARKER"} {
				if strings.Contains(all, secret) {
					t.Errorf("the Vault address's user info (%s) is quoted: %q (stderr %q)", secret, err, errb.String())
				}
			}
			if !strings.Contains(err.Error(), "http://"+hostPort+"/v1/auth/token/lookup-self") {
				t.Errorf("server = %q, want Vault's refused request named", err)
			}
		})
	}
}

// closedLoopbackAddrs returns n distinct loopback host:ports nothing
// listens on: ports the kernel just gave n listeners, all bound at once (so
// no two are the same), then closed (a connection to one is refused until
// something else binds it).
func closedLoopbackAddrs(t *testing.T, n int) []string {
	t.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		addrs[i] = ln.Addr().String()
	}
	return addrs
}

// TestServerVaultTokenTwice: with both VAULT_TOKEN and vault.token_file set,
// the server failed with "vault: vault: exactly one of token and token_file
// is required (set VAULT_TOKEN, vault.token_file or vault.auth)", which
// reads as if neither were set, while config check said what was wrong.
// Both now say the same (one function): the token file is set, where (the
// config file and its line), and so is VAULT_TOKEN; the server says it
// before anything starts (the audit file is not created) and never quotes
// a token. With neither, both say that no token is there.
func TestServerVaultTokenTwice(t *testing.T) {
	addrs := closedLoopbackAddrs(t, 2)
	dir := t.TempDir()
	pol := writeFile(t, dir, "p.yaml", "version: 1\n")
	tokenFile := writeFile(t, dir, "vault-token", "hvs.FILE-TOKEN-MARKER-8\n")
	if err := os.Chmod(tokenFile, 0o600); err != nil {
		t.Fatal(err)
	}
	audit := filepath.Join(dir, "audit.jsonl")
	head := "listen: " + addrs[1] + "\npublic_url: http://" + addrs[1] + "\npolicy: " + pol +
		"\naudit: {file: " + audit + "}\n"
	both := writeFile(t, dir, "both.yaml", head+"vault:\n  address: http://"+addrs[0]+"\n  token_file: "+tokenFile+"\n")
	neither := writeFile(t, dir, "neither.yaml", head+"vault: {address: http://"+addrs[0]+"}\n")
	// The deploy manifests' vault-token Secret volume is optional (a pod
	// started after the switch to vault.auth does not wait for a deleted
	// Secret): a token_file whose Secret is gone fails the start, before
	// anything starts, naming the field, the path and the line.
	gone := filepath.Join(dir, "vault", "token")
	missing := writeFile(t, dir, "missing.yaml", head+"vault:\n  address: http://"+addrs[0]+"\n  token_file: "+gone+"\n")
	for _, tc := range []struct {
		name, cfg, envToken, want string
	}{
		{"both", both, "hvs.ENV-TOKEN-MARKER-9", both + ": vault.token_file: set, and so is VAULT_TOKEN: the server takes exactly one (unset VAULT_TOKEN, or remove vault.token_file) (line 7)"},
		{"neither", neither, "", neither + ": vault: no Vault token here: the server needs VAULT_TOKEN, vault.token_file or vault.auth (AppRole, Kubernetes) to start"},
		{"missing-token-file", missing, "", missing + ": vault.token_file: stat " + gone + ": no such file or directory (line 7)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"VAULT_TOKEN": tc.envToken, "KEYTRAIL_RECONCILE": "off"}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var out, errb strings.Builder
			err := run(ctx, []string{"server", "--config", tc.cfg}, func(k string) string { return env[k] }, &out, &errb)
			if err == nil {
				t.Fatal("server started")
			}
			if err.Error() != tc.want {
				t.Errorf("server = %q\nwant      %q", err, tc.want)
			}
			if _, statErr := os.Stat(audit); !errors.Is(statErr, fs.ErrNotExist) {
				t.Errorf("audit file: %v, want it not created (refused before anything starts)", statErr)
			}
			if strings.Contains(err.Error()+out.String()+errb.String(), "TOKEN-MARKER") {
				t.Errorf("a Vault token is quoted: %q (stderr %q)", err, errb.String())
			}
			cout, cerr, _ := runCLI(t, env, "config", "check", "--config", tc.cfg)
			if !strings.Contains(cerr, tc.want) {
				t.Errorf("config check does not say what the server does:\nstdout: %s\nstderr: %s\nwant %q", cout, cerr, tc.want)
			}
		})
	}
}

// TestServerVaultNotRunningHidesAddressPath: a vault.address with a path (a
// token pasted into it) was quoted whole in the "is Vault running at ...?"
// hint and in the client's request URL before it. The hint now names the
// address's scheme and host only, as broker/client names the broker's, and
// the client's error names the request without the address's path.
func TestServerVaultNotRunningHidesAddressPath(t *testing.T) {
	addrs := closedLoopbackAddrs(t, 2) // distinct: both bound at once
	hostPort, listen := addrs[0], addrs[1]
	dir := t.TempDir()
	pol := writeFile(t, dir, "p.yaml", "version: 1\n")
	cfg := writeFile(t, dir, "config.yaml", "listen: "+listen+"\npublic_url: http://"+listen+
		"\npolicy: "+pol+"\naudit: {file: "+dir+"/audit.jsonl}\nvault: {address: \"http://"+hostPort+"/PATH-MARKER-8/\"}\n")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errb strings.Builder
	err := run(ctx, []string{"server", "--config", cfg}, func(k string) string {
		return map[string]string{"VAULT_TOKEN": "hvs.x", "KEYTRAIL_RECONCILE": "off"}[k]
	}, &out, &errb)
	if err == nil {
		t.Fatal("server started with no Vault at its address")
	}
	if all := err.Error() + out.String() + errb.String(); strings.Contains(all, "PATH-MARKER") {
		t.Errorf("the Vault address's path is quoted: %q (stderr %q)", err, errb.String())
	}
	want := "is Vault running at http://" + hostPort + " (from vault.address in " + cfg + ", line 5)?"
	if !strings.Contains(err.Error(), want) {
		t.Errorf("server = %q, want it to ask %q", err, want)
	}
	if !strings.Contains(err.Error(), "//"+hostPort+"/v1/") || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("server = %q, want the client's refused request to %s", err, hostPort)
	}
}
