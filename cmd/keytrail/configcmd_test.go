package main

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestConfigCheck: keytrail config check validates a server configuration
// and its policy as keytrail server does at start-up (same decoder,
// validation and environment overrides), names every problem by file,
// field and line, and contacts nothing: no request reaches Vault, no
// connection Redis, and the audit file is not created.
func TestConfigCheck(t *testing.T) {
	var vaultCalls atomic.Int32
	vault := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		vaultCalls.Add(1)
		http.Error(w, "config check must not call Vault", http.StatusTeapot)
	}))
	defer vault.Close()
	redis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer redis.Close()

	dir := t.TempDir()
	pol := writeFile(t, dir, "policy.yaml", serverTestPolicy)
	badPol := writeFile(t, dir, "bad-policy.yaml", strings.Replace(serverTestPolicy, "ttl: 5m", "ttl: 0s", 1))
	auditFile := filepath.Join(dir, "audit.jsonl")
	tokenFile := writeFile(t, dir, "vault-token", "s.from-file\n")
	if err := os.Chmod(tokenFile, 0o600); err != nil {
		t.Fatal(err)
	}
	config := func(policy, extra string) string {
		return "public_url: http://127.0.0.1:7700\n" + // 1
			"policy: " + policy + "\n" + // 2
			"vault: {address: " + vault.URL + "}\n" + // 3
			"store: {redis_url: 'redis://" + redis.Addr().String() + "/0'}\n" + // 4
			"audit: {file: " + auditFile + "}\n" + // 5
			extra
	}
	tests := []struct {
		name       string
		yaml       string
		env        map[string]string
		wantCode   int
		wantOut    []string
		wantStderr []string // lines, each after "<config file>: " unless it starts with "/"
	}{
		{name: "ok/valid", yaml: config(pol, ""),
			wantOut: []string{"ok: config {config} (listen 127.0.0.1:7700, public_url http://127.0.0.1:7700, store redis, audit " + auditFile + ")",
				"ok: policy " + pol + ": 1 issuers, 1 workloads, 1 grants, 0 admins, 0 exceptions (hash "}},
		{name: "ok/env-override", yaml: config(pol, ""), env: map[string]string{"KEYTRAIL_LISTEN": "127.0.0.1:9999"},
			wantOut: []string{"(listen 127.0.0.1:9999,"}},
		{name: "fail/bad-field", yaml: config(pol, "log:\n  level: loud\n"), wantCode: 1,
			wantStderr: []string{"log.level: must be debug, info, warn or error (line 7)"}},
		{name: "fail/unknown-field", yaml: config(pol, "listen_addr: 127.0.0.1:1\n"), wantCode: 1,
			wantStderr: []string{"listen_addr: unknown field (line 6)"}},
		{name: "fail/env-override-named", yaml: config(pol, ""), env: map[string]string{"VAULT_ADDR": "not a url"}, wantCode: 1,
			wantStderr: []string{"vault.address: must be an absolute URL (from VAULT_ADDR)"}},
		{name: "fail/missing-policy", yaml: config(filepath.Join(dir, "nope.yaml"), ""), wantCode: 1,
			wantStderr: []string{"policy: stat " + filepath.Join(dir, "nope.yaml") + ": no such file or directory (line 2)"}},
		{name: "fail/invalid-policy", yaml: config(badPol, ""), wantCode: 1, wantOut: []string{"ok: config {config}"},
			wantStderr: []string{badPol + ": grants[0].ttl: "}},
		{name: "ok/no-vault-token-warns", yaml: config(pol, ""),
			wantOut:    []string{"ok: config {config}"},
			wantStderr: []string{"vault: no Vault token here: the server needs VAULT_TOKEN, vault.token_file or vault.auth"}},
		{name: "fail/vault-token-twice", yaml: strings.Replace(config(pol, ""), "vault: {address: "+vault.URL+"}", "vault: {address: "+vault.URL+", token_file: "+tokenFile+"}", 1),
			env: map[string]string{"VAULT_TOKEN": "s.from-env"}, wantCode: 1,
			wantStderr: []string{"vault.token_file: set, and so is VAULT_TOKEN: the server takes exactly one (unset VAULT_TOKEN, or remove vault.token_file) (line 3)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := writeFile(t, t.TempDir(), "keytrail.yaml", tt.yaml)
			out, stderr, err := runCLI(t, tt.env, "config", "check", "--config", cfg)
			if got := exitCode(err); got != tt.wantCode {
				t.Fatalf("config check = %v (exit %d), want exit %d\nstdout: %s\nstderr: %s", err, got, tt.wantCode, out, stderr)
			}
			for _, w := range tt.wantOut {
				if w = strings.ReplaceAll(w, "{config}", cfg); !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tt.wantStderr {
				if !strings.HasPrefix(w, "/") {
					w = cfg + ": " + w
				}
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if tt.wantCode != 0 && len(tt.wantOut) == 0 && out != "" {
				t.Errorf("stdout = %q for an invalid configuration, want nothing", out)
			}
		})
	}
	t.Run("fail/no-such-file", func(t *testing.T) {
		missing := filepath.Join(dir, "missing.yaml")
		_, stderr, err := runCLI(t, nil, "config", "check", "--config", missing)
		if exitCode(err) != 1 || !strings.Contains(err.Error(), "config check: open "+missing+": no such file or directory") || stderr != "" {
			t.Errorf("config check of a missing file = %v (stderr %q), want exit 1, one message naming the command and the file", err, stderr)
		}
	})
	if n := vaultCalls.Load(); n != 0 {
		t.Errorf("config check sent %d request(s) to Vault, want none", n)
	}
	// A connection attempt made during the checks is queued by now.
	if err := redis.(*net.TCPListener).SetDeadline(time.Now()); err != nil {
		t.Fatal(err)
	}
	if c, err := redis.Accept(); err == nil {
		c.Close()
		t.Errorf("config check connected to Redis, want no connection")
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("accept: %v", err)
	}
	if _, err := os.Stat(auditFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("audit file after config check: %v, want it not created", err)
	}
}

func TestConfigCheckHelp(t *testing.T) {
	out, _, err := runCLI(t, nil, "config", "check", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--config", "KEYTRAIL_LISTEN", "VAULT_ADDR", "KEYTRAIL_REDIS_URL", "file, field and line",
		"Nothing is contacted or written", "Exit status: 0", "2 usage",
		"tls.key_file", "expires within 7 days", "mode bits in 027", "CA bundle", "within 30 days"} {
		if !strings.Contains(out, want) {
			t.Errorf("keytrail config check --help lacks %q", want)
		}
	}
}

// TestConfigCheckReadsServerFiles: keytrail config check reads and parses
// every file the server reads only after its Vault login (TLS key pair,
// client CA, Vault CA, Redis CA, checkpoint key, token and AppRole files),
// with the server's readers, and names each problem by file, field and
// line. Before, it only checked that they existed and said "ok"; the
// dates of a CA bundle's certificates were not looked at (an expired
// vault.ca_file passed).
func TestConfigCheckReadsServerFiles(t *testing.T) {
	dir := t.TempDir()
	pol := writeFile(t, dir, "policy.yaml", serverTestPolicy)
	now := time.Now()
	cert, key := writeKeyPair(t, dir, "broker", now.Add(-time.Hour), now.Add(90*24*time.Hour))
	otherCert, _ := writeKeyPair(t, dir, "other", now.Add(-time.Hour), now.Add(30*24*time.Hour))
	expired, expiredKey := writeKeyPair(t, dir, "expired", now.Add(-48*time.Hour), now.Add(-time.Hour))
	expiring, expiringKey := writeKeyPair(t, dir, "expiring", now.Add(-time.Hour), now.Add(3*24*time.Hour))
	future, futureKey := writeKeyPair(t, dir, "future", now.Add(time.Hour), now.Add(48*time.Hour))
	caExpiring, _ := writeKeyPair(t, dir, "ca-expiring", now.Add(-time.Hour), now.Add(20*24*time.Hour))
	caBundle := writeFile(t, dir, "ca-bundle.pem", mustReadFile(t, cert)+mustReadFile(t, expired))
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cpKey := writeEd25519Key(t, dir, "checkpoint.key")
	ecdsaCPKey := writeFile(t, dir, "ecdsa-checkpoint.key", pkcs8PEM(t, ecKey))
	garbage := writeFile(t, dir, "garbage.pem", "not a PEM file\n")
	empty := writeFile(t, dir, "empty", "\n")
	token := writeFile(t, dir, "vault-token", "hvs.secret\n")
	missing := filepath.Join(dir, "missing")
	looseKey := writeFile(t, dir, "loose.key", pkcs8PEM(t, mustReadKey(t, key)))
	if err := os.Chmod(looseKey, 0o644); err != nil {
		t.Fatal(err)
	}

	auditFile := filepath.Join(dir, "audit.jsonl")
	// config puts extra from line 5 on.
	// vault adds to vault's flow mapping, audit to audit.file's value.
	config := func(vault, audit, extra string) string {
		return "public_url: http://127.0.0.1:7700\n" + // 1
			"policy: " + pol + "\n" + // 2
			"vault: {address: 'http://127.0.0.1:1'" + vault + "}\n" + // 3
			"audit: {file: " + audit + "}\n" + // 4
			extra
	}
	tlsBlock := func(cert, key, clientCA string) string {
		s := "tls:\n" + // 5
			"  cert_file: " + cert + "\n" + // 6
			"  key_file: " + key + "\n" // 7
		if clientCA != "" {
			s += "  client_ca_file: " + clientCA + "\n" // 8
		}
		return s
	}
	tests := []struct {
		name        string
		yaml        string
		wantCode    int
		wantStderr  []string // each after "<config file>: "
		wantWarning []string // each after "warning: <config file>: "
	}{
		{name: "ok/every-file", yaml: config(", ca_file: "+cert+", token_file: "+token, auditFile+", checkpoint_key_file: "+cpKey,
			tlsBlock(cert, key, cert)+"store: {redis_url: 'rediss://127.0.0.1:1/0', ca_file: "+cert+"}\n")},
		{name: "ok/approle", yaml: config(", approle: {role_id_file: "+token+", secret_id_file: "+token+"}", auditFile, "")},

		// A limit under one an hour, as a policy's rate draws (a
		// Retry-After says at most an hour).
		{name: "warn/limits-under-one-an-hour", yaml: config(", token_file: "+token, auditFile,
			"refusal_limit: {per_second: 0.0001, global_per_second: 0.0002}\n"+ // 5
				"introspect_limit: {per_second: 0.00001}\n"), // 6
			wantWarning: []string{
				"refusal_limit.per_second: 0.0001 is less than one request an hour (1/3600): a 429's Retry-After says at most an hour, and a client that comes back then is refused again until its token is back (line 5)",
				"refusal_limit.global_per_second: 0.0002 is less than one request an hour (1/3600)",
				"introspect_limit.per_second: 1e-05 is less than one request an hour (1/3600)",
			}},
		// A startup_timeout so short a start-up that needs longer is
		// stopped at every start (a crash loop); 0 is none.
		{name: "warn/startup-timeout-under-30s", yaml: config(", token_file: "+token, auditFile, "startup_timeout: 1s\n"), // 5
			wantWarning: []string{"startup_timeout: 1s is less than 30s: a start-up that needs longer (a slow Vault login, a long audit log read back to its last checkpoint) is stopped at every start and never serves (0: none; absent: 5m0s) (line 5)"}},
		{name: "ok/startup-timeout-none", yaml: config(", token_file: "+token, auditFile, "startup_timeout: 0s\n")},
		{name: "ok/startup-timeout-30s", yaml: config(", token_file: "+token, auditFile, "startup_timeout: 30s\n")},
		{name: "ok/limits-of-one-an-hour", yaml: config(", token_file: "+token, auditFile,
			"refusal_limit: {per_second: 0.0002778, global_per_second: -1}\nintrospect_limit: {per_second: -1}\n")},
		{name: "fail/tls-key-unparsable", yaml: config("", auditFile, tlsBlock(cert, garbage, "")), wantCode: 1,
			wantStderr: []string{"tls.key_file: " + garbage + ": no PEM private key (line 7)"}},
		{name: "fail/tls-cert-unparsable", yaml: config("", auditFile, tlsBlock(garbage, key, "")), wantCode: 1,
			wantStderr: []string{"tls.cert_file: " + garbage + ": no PEM certificate (line 6)"}},
		{name: "fail/tls-mismatched-pair", yaml: config("", auditFile, tlsBlock(otherCert, key, "")), wantCode: 1,
			wantStderr: []string{"tls.key_file: " + key + ": private key does not match the certificate of tls.cert_file " + otherCert + " (line 7)"}},
		{name: "fail/tls-cert-expired", yaml: config("", auditFile, tlsBlock(expired, expiredKey, "")), wantCode: 1,
			wantStderr: []string{"tls.cert_file: " + expired + ": certificate expired at "}},
		{name: "fail/tls-cert-not-yet-valid", yaml: config("", auditFile, tlsBlock(future, futureKey, "")), wantCode: 1,
			wantStderr: []string{"tls.cert_file: " + future + ": certificate not valid before "}},
		{name: "warn/tls-cert-expires-within-7-days", yaml: config("", auditFile, tlsBlock(expiring, expiringKey, "")),
			wantWarning: []string{"tls.cert_file: " + expiring + ": certificate expires at "}},
		{name: "warn/tls-key-readable-by-others", yaml: config("", auditFile, tlsBlock(cert, looseKey, "")),
			wantWarning: []string{"tls.key_file: " + looseKey + " has mode 0644: others can read or change it; chmod 600 " + looseKey + " (line 7)"}},
		{name: "fail/tls-client-ca-unparsable", yaml: config("", auditFile, tlsBlock(cert, key, garbage)), wantCode: 1,
			wantStderr: []string{"tls.client_ca_file: " + garbage + ": no PEM certificate (line 8)"}},
		{name: "fail/vault-ca-unparsable", yaml: config(", ca_file: "+garbage, auditFile, ""), wantCode: 1,
			wantStderr: []string{"vault.ca_file: " + garbage + ": no PEM certificate (line 3)"}},
		// A CA bundle's certificates are judged by date too: none valid
		// is a problem; an unusable one next to a valid one, or one
		// that expires within 30 days, a warning.
		{name: "fail/vault-ca-expired", yaml: config(", ca_file: "+expired, auditFile, ""), wantCode: 1,
			wantStderr: []string{`vault.ca_file: ` + expired + `: certificate "expired" expired at `, `: no certificate of the bundle is valid now (line 3)`}},
		{name: "fail/client-ca-not-yet-valid", yaml: config("", auditFile, tlsBlock(cert, key, future)), wantCode: 1,
			wantStderr: []string{`tls.client_ca_file: ` + future + `: certificate "future" not valid before `, `: no certificate of the bundle is valid now (line 8)`}},
		{name: "warn/store-ca-expires-within-30-days", yaml: config("", auditFile, "store: {redis_url: 'rediss://127.0.0.1:1/0', ca_file: "+caExpiring+"}\n"),
			wantWarning: []string{`store.ca_file: ` + caExpiring + `: certificate "ca-expiring" expires at `, `, in less than 30 days (line 5)`}},
		{name: "warn/client-ca-bundle-holds-an-expired-cert", yaml: config("", auditFile, tlsBlock(cert, key, caBundle)),
			wantWarning: []string{`tls.client_ca_file: ` + caBundle + `: certificate "expired" expired at `, `: it verifies nothing (remove it) (line 8)`}},
		{name: "fail/vault-token-file-empty", yaml: config(", token_file: "+empty, auditFile, ""), wantCode: 1,
			wantStderr: []string{"vault.token_file: " + empty + ": empty (line 3)"}},
		{name: "fail/approle-secret-id-file-missing", yaml: config(", approle: {role_id_file: "+token+", secret_id_file: "+missing+"}", auditFile, ""), wantCode: 1,
			wantStderr: []string{"vault.approle.secret_id_file: open " + missing + ": no such file or directory (line 3)"}},
		{name: "fail/auth-role-id-file-empty", yaml: config(", auth: {method: approle, role_id_file: "+empty+", secret_id_file: "+token+"}", auditFile, ""), wantCode: 1,
			wantStderr: []string{"vault.auth.role_id_file: " + empty + ": empty (line 3)"}},
		{name: "fail/kubernetes-jwt-file-missing", yaml: config(", auth: {method: kubernetes, role: broker, jwt_file: "+missing+"}", auditFile, ""), wantCode: 1,
			wantStderr: []string{"vault.auth.jwt_file: open " + missing + ": no such file or directory (line 3)"}},
		{name: "fail/store-ca-unparsable", yaml: config("", auditFile, "store: {redis_url: 'rediss://127.0.0.1:1/0', ca_file: "+garbage+"}\n"), wantCode: 1,
			wantStderr: []string{"store.ca_file: " + garbage + ": no PEM certificate (line 5)"}},
		{name: "fail/checkpoint-key-unparsable", yaml: config("", auditFile+", checkpoint_key_file: "+garbage, ""), wantCode: 1,
			wantStderr: []string{"audit.checkpoint_key_file: " + garbage + ": no PEM block found (line 4)"}},
		{name: "fail/checkpoint-key-not-ed25519", yaml: config("", auditFile+", checkpoint_key_file: "+ecdsaCPKey, ""), wantCode: 1,
			wantStderr: []string{"audit.checkpoint_key_file: " + ecdsaCPKey + ": *ecdsa.PrivateKey is not an Ed25519 key (line 4)"}},
		{name: "fail/default-checkpoint-key-unparsable", yaml: config("", filepath.Join(dir, "bad-default.jsonl"), ""), wantCode: 1,
			wantStderr: []string{"audit.file: default checkpoint key " + filepath.Join(dir, "bad-default.jsonl.checkpoint.key") + ": no PEM block found (line 4)"}},
	}
	writeFile(t, dir, "bad-default.jsonl.checkpoint.key", "garbage\n")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := writeFile(t, t.TempDir(), "keytrail.yaml", tt.yaml)
			out, stderr, err := runCLI(t, nil, "config", "check", "--config", cfg)
			if got := exitCode(err); got != tt.wantCode {
				t.Fatalf("config check = %v (exit %d), want exit %d\nstdout: %s\nstderr: %s", err, got, tt.wantCode, out, stderr)
			}
			// A want starting with ":" or "," is the end of the line
			// before it (after a time, say).
			for _, w := range tt.wantStderr {
				if !strings.HasPrefix(w, ":") {
					w = cfg + ": " + w
				}
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			for _, w := range tt.wantWarning {
				if !strings.HasPrefix(w, ":") && !strings.HasPrefix(w, ",") {
					w = "warning: " + cfg + ": " + w
				}
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if len(tt.wantStderr)+len(tt.wantWarning) == 0 && stderr != "" {
				t.Errorf("stderr = %q, want nothing", stderr)
			}
			if tt.wantCode == 0 && !strings.Contains(out, "ok: policy") {
				t.Errorf("stdout lacks the policy's ok line:\n%s", out)
			}
			if tt.wantCode != 0 && out != "" {
				t.Errorf("stdout = %q for a configuration whose files are bad, want nothing", out)
			}
		})
	}
	if _, err := os.Stat(auditFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("audit file after config check: %v, want it not created", err)
	}
	if _, err := os.Stat(defaultCheckpointKey(auditFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("default checkpoint key after config check: %v, want it not created", err)
	}
}

// mustReadFile is the content of the file at path.
func mustReadFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// mustReadKey is the private key of the PEM file at path.
func mustReadKey(t *testing.T, path string) crypto.PrivateKey {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestConfigCheckKubernetesDefaultJWTFile: a Kubernetes login without
// vault.auth.jwt_file reads the pod's service-account token. Checked
// outside a pod (a CI job), that file is not there: a warning, not a
// problem (it said "open …: no such file or directory", exit 1). One that
// is there must still be readable and not empty.
func TestConfigCheckKubernetesDefaultJWTFile(t *testing.T) {
	dir := t.TempDir()
	pol := writeFile(t, dir, "policy.yaml", serverTestPolicy)
	cfg := writeFile(t, dir, "keytrail.yaml", "public_url: http://127.0.0.1:7700\n"+
		"policy: "+pol+"\n"+
		"vault: {address: 'http://127.0.0.1:1', auth: {method: kubernetes, role: broker}}\n"+
		"audit: {file: "+filepath.Join(dir, "audit.jsonl")+"}\n")
	saved := kubernetesJWTFile
	t.Cleanup(func() { kubernetesJWTFile = saved })

	kubernetesJWTFile = filepath.Join(dir, "not-in-a-pod", "token")
	out, stderr, err := runCLI(t, nil, "config", "check", "--config", cfg)
	if exitCode(err) != 0 || !strings.Contains(out, "ok: policy") {
		t.Fatalf("config check outside a pod = %v (exit %d), want exit 0\nstdout: %s\nstderr: %s", err, exitCode(err), out, stderr)
	}
	if want := "warning: " + cfg + ": vault.auth.jwt_file: not set, and the pod's service-account token " + kubernetesJWTFile + " is not here"; !strings.Contains(stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr)
	}

	kubernetesJWTFile = writeFile(t, dir, "empty-token", "\n")
	_, stderr, err = runCLI(t, nil, "config", "check", "--config", cfg)
	if want := cfg + ": vault.auth.jwt_file: " + kubernetesJWTFile + ": empty (line 3)"; exitCode(err) != 1 || !strings.Contains(stderr, want) {
		t.Errorf("config check with an empty service-account token = %v (exit %d), want exit 1 and %q\nstderr: %s", err, exitCode(err), want, stderr)
	}
}

// TestPolicyCAFileDatesAreWarnings: the dates of the certificates of the
// policy's own ca_files (an issuer's, a proxy grant's) are judged as
// config check judges the configuration's CA bundles, but as warnings
// only: keytrail policy check --files, keytrail config check (which loads
// the policy) and the server (which logs them at every load) still accept
// the policy, as a problem there would stop the server at start or refuse a
// reload. Each warning names the policy file, the field, the file and the
// certificate. Before, they passed without a word.
func TestPolicyCAFileDatesAreWarnings(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	expired, _ := writeKeyPair(t, dir, "issuer-ca", now.Add(-48*time.Hour), now.Add(-time.Hour))
	expiring, _ := writeKeyPair(t, dir, "upstream-ca", now.Add(-time.Hour), now.Add(20*24*time.Hour))
	pol := writeFile(t, dir, "policy.yaml", `version: 1
issuers:
  - name: i
    issuer: https://issuer.example
    jwks_url: https://issuer.example/jwks
    audiences: [keytrail]
    algorithms: [ES256]
    ca_file: `+expired+`
grants:
  - name: api
    kind: proxy
    ttl: 5m
    proxy:
      upstream: https://api.example.com
      ca_file: `+expiring+`
      secret: {vault_kv: secret/data/api, field: key}
      inject: {header: X-Api-Key}
      paths: ["/v1/*"]
`)
	want := []string{
		"warning: " + pol + `: issuers[0].ca_file: ` + expired + `: certificate "issuer-ca" expired at `,
		`: no certificate of the bundle is valid now (line 8)`,
		"warning: " + pol + `: grants[0].proxy.ca_file: ` + expiring + `: certificate "upstream-ca" expires at `,
		`, in less than 30 days (line 15)`,
	}
	cfg := writeFile(t, dir, "keytrail.yaml", "public_url: http://127.0.0.1:7700\npolicy: "+pol+
		"\nvault: {address: 'http://127.0.0.1:1'}\naudit: {file: "+filepath.Join(dir, "audit.jsonl")+"}\n")
	for _, args := range [][]string{{"policy", "check", "--files", pol}, {"config", "check", "--config", cfg}} {
		out, stderr, err := runCLI(t, nil, args...)
		if err != nil || !strings.Contains(out, "ok:") {
			t.Errorf("%s = %q, %v; want ok (exit 0)\nstderr: %s", strings.Join(args[:2], " "), out, err, stderr)
		}
		for _, w := range want {
			if !strings.Contains(stderr, w) {
				t.Errorf("%s: stderr lacks %q:\n%s", strings.Join(args[:2], " "), w, stderr)
			}
		}
	}
	// Without --files the files are not read: no warning about them.
	if _, stderr, err := runCLI(t, nil, "policy", "check", pol); err != nil || stderr != "" {
		t.Errorf("policy check (no --files) = %v, stderr %q; want ok and nothing on stderr", err, stderr)
	}
	var logs bytes.Buffer
	if _, err := loadServedPolicy(pol, slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatalf("loadServedPolicy = %v, want the policy served", err)
	}
	for _, w := range []string{"issuers[0].ca_file: " + expired, "grants[0].proxy.ca_file: " + expiring} {
		if !strings.Contains(logs.String(), "level=WARN msg=\"policy warning\" problem=\""+pol+": "+w) {
			t.Errorf("loadServedPolicy logged %q; want a policy warning naming %s", logs.String(), w)
		}
	}
}
