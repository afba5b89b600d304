package vault_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"
	vaultapi "github.com/hashicorp/vault/api"

	vault "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/e2e/harness"
	"github.com/keytrail/keytrail/policies"
)

// TestRealVault runs the adapter against a real `vault server -dev`, with a
// broker token that holds only BrokerPolicy plus the policy it hands out.
func TestRealVault(t *testing.T) {
	v := harness.StartVault(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	root := v.Client
	putPolicies(t, ctx, root, map[string]string{
		"payments-read":   `path "secret/data/payments/*" { capabilities = ["read"] }`,
		"keytrail-broker": vault.BrokerPolicy("", harness.VaultSigningKey, harness.VaultEd25519Key),
	})
	bc := newTokenClient(t, ctx, v, &vaultapi.TokenCreateRequest{
		Policies: []string{"keytrail-broker", "payments-read", "default"}, TTL: "1h",
	}, 10*time.Second)

	t.Run("ok/health", func(t *testing.T) {
		if err := vault.Health(ctx, bc); err != nil {
			t.Errorf("Health() = %v, want nil", err)
		}
	})

	t.Run("ok/token-mint-lookup-audit-revoke", func(t *testing.T) {
		m, err := vault.NewTokenMinter(vault.TokenMinterOptions{Client: bc})
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		req := broker.MintRequest{
			IssuanceID: "iss_01JINTEGRATION", Workload: "payments-api", Owner: "team-payments", SessionID: "ses_it",
			Grant: policies.Grant{Name: "payments-vault", Kind: broker.KindVaultToken, TTL: policies.Duration(15 * time.Minute),
				VaultToken: &policies.VaultTokenGrant{Policies: []string{"payments-read"}}},
			TTL: 15 * time.Minute, Now: now,
		}
		cred, err := m.Mint(ctx, req)
		if err != nil {
			t.Fatalf("Mint() = %v", err)
		}
		if cred.Refs.ExpiresAt.After(now.Add(15*time.Minute)) || cred.Refs.ExpiresAt.Before(now.Add(14*time.Minute)) {
			t.Errorf("ExpiresAt = %v, want about %v and never later", cred.Refs.ExpiresAt, now.Add(15*time.Minute))
		}

		tc := tokenClient(t, root, cred.AccessToken)
		self, err := tc.Auth().Token().LookupSelfWithContext(ctx)
		if err != nil {
			t.Fatalf("lookup-self with the minted token = %v", err)
		}
		got := map[string]any{
			"accessor":         self.Data["accessor"],
			"display_name":     self.Data["display_name"],
			"meta":             self.Data["meta"],
			"policies":         self.Data["policies"],
			"orphan":           self.Data["orphan"],
			"renewable":        self.Data["renewable"],
			"explicit_max_ttl": fmt.Sprint(self.Data["explicit_max_ttl"]),
			"num_uses":         fmt.Sprint(self.Data["num_uses"]),
		}
		want := map[string]any{
			"accessor":     cred.Refs.Accessor,
			"display_name": "token-keytrail-payments-api",
			"meta": map[string]any{"workload": "payments-api", "owner": "team-payments", "session_id": "ses_it",
				"issuance_id": "iss_01JINTEGRATION", "grant": "payments-vault"},
			"policies":         []any{"default", "payments-read"},
			"orphan":           true,
			"renewable":        false,
			"explicit_max_ttl": "900",
			"num_uses":         "0",
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("lookup-self (-want +got):\n%s", diff)
		}

		// Vault's audit entry of that request names the issuance.
		entry := findAudit(t, v.AuditLogPath, "auth/token/lookup-self", "iss_01JINTEGRATION")
		if diff := cmp.Diff(map[string]any{
			"accessor": cred.Refs.Accessor, "display_name": "token-keytrail-payments-api",
		}, map[string]any{"accessor": entry["accessor"], "display_name": entry["display_name"]}); diff != "" {
			t.Errorf("audit auth block (-want +got):\n%s", diff)
		}

		is := &broker.Issuance{ID: req.IssuanceID, Refs: cred.Refs}
		if err := m.Revoke(ctx, is); err != nil {
			t.Fatalf("Revoke() = %v", err)
		}
		if _, err := tc.Auth().Token().LookupSelfWithContext(ctx); err == nil {
			t.Errorf("lookup-self after Revoke() = nil error, want the token rejected")
		}
		if err := m.Revoke(ctx, is); err != nil {
			t.Errorf("second Revoke() = %v, want nil (idempotent)", err)
		}
		if err := m.Revoke(ctx, &broker.Issuance{Refs: broker.CredentialRefs{Accessor: "no-such-accessor"}}); err != nil {
			t.Errorf("Revoke(unknown accessor) = %v, want nil", err)
		}
	})

	t.Run("fail/policy-the-broker-does-not-hold", func(t *testing.T) {
		m, err := vault.NewTokenMinter(vault.TokenMinterOptions{Client: bc})
		if err != nil {
			t.Fatal(err)
		}
		_, err = m.Mint(ctx, broker.MintRequest{
			IssuanceID: "iss_01JDENIED", Workload: "w", Owner: "o", SessionID: "s",
			Grant: policies.Grant{Name: "g", Kind: broker.KindVaultToken, VaultToken: &policies.VaultTokenGrant{Policies: []string{"admin"}}},
			TTL:   time.Minute, Now: time.Now(),
		})
		var be *broker.Error
		if !errors.As(err, &be) || !errors.Is(err, broker.ErrUnavailable) || be.Reason != vault.ReasonRejected {
			t.Errorf("Mint(policy not held) = %v, want ErrUnavailable/%s", err, vault.ReasonRejected)
		}
	})

	keys, err := vault.NewTransitKeys(vault.TransitKeysOptions{Client: bc, Keys: []string{harness.VaultSigningKey, harness.VaultEd25519Key}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, key, alg string
	}{
		{"ok/jwt-es256", harness.VaultSigningKey, "ES256"},
		{"ok/jwt-eddsa", harness.VaultEd25519Key, "EdDSA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := vault.NewJWTMinter(vault.JWTMinterOptions{Client: bc, PublicURL: "https://keytrail.test"})
			if err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			cred, err := m.Mint(ctx, broker.MintRequest{
				IssuanceID: "iss_01JJWT", Workload: "orders-client", Owner: "team-orders", SessionID: "ses_j",
				Grant: policies.Grant{Name: "orders-jwt", Kind: broker.KindJWT, JWT: &policies.JWTGrant{Audience: "orders-api", TransitKey: tc.key}},
				TTL:   5 * time.Minute, Now: now,
			})
			if err != nil {
				t.Fatalf("Mint() = %v", err)
			}
			pks, err := keys.PublicKeys(ctx)
			if err != nil {
				t.Fatalf("PublicKeys() = %v", err)
			}
			tok, err := jwt.Parse(cred.AccessToken, func(tk *jwt.Token) (any, error) {
				i := slices.IndexFunc(pks, func(k broker.PublicKey) bool { return k.KID == tk.Header["kid"] && k.Alg == tk.Method.Alg() })
				if i < 0 {
					return nil, fmt.Errorf("no public key %v", tk.Header["kid"])
				}
				return pks[i].Key, nil
			}, jwt.WithValidMethods([]string{tc.alg}), jwt.WithIssuer("https://keytrail.test"), jwt.WithAudience("orders-api"), jwt.WithExpirationRequired())
			if err != nil {
				t.Fatalf("verify minted JWT with TransitKeys = %v", err)
			}
			claims := tok.Claims.(jwt.MapClaims)
			got := map[string]any{"kid": tok.Header["kid"], "sub": claims["sub"], "jti": claims["jti"], "sid": claims["sid"], "owner": claims["owner"], "grant": claims["grant"]}
			want := map[string]any{"kid": tc.key + ":1", "sub": "orders-client", "jti": "iss_01JJWT", "sid": "ses_j", "owner": "team-orders", "grant": "orders-jwt"}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("JWT (-want +got):\n%s", diff)
			}
			if cred.Refs.ExpiresAt.After(now.Add(5 * time.Minute)) {
				t.Errorf("ExpiresAt = %v, after now+ttl %v", cred.Refs.ExpiresAt, now.Add(5*time.Minute))
			}
		})
	}

	// A key Vault lacks (a typo in one jwt grant: the root token reads 404,
	// the broker's token 403) leaves the others in the list.
	t.Run("ok/jwks-without-a-missing-key", func(t *testing.T) {
		for _, c := range []*vaultapi.Client{root, bc} {
			tk, err := vault.NewTransitKeys(vault.TransitKeysOptions{Client: c, Keys: []string{harness.VaultSigningKey, "no-such-key"}, Log: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			pks, err := tk.PublicKeys(ctx)
			if err != nil {
				t.Fatalf("PublicKeys() = %v, want %s's versions", err, harness.VaultSigningKey)
			}
			var kids []string
			for _, k := range pks {
				kids = append(kids, k.KID)
			}
			if want := []string{harness.VaultSigningKey + ":1"}; !slices.Equal(kids, want) {
				t.Errorf("PublicKeys() kids = %q, want %q", kids, want)
			}
		}
	})

	t.Run("checkpoints", func(t *testing.T) { testRealVaultCheckpoints(ctx, t, bc) })
	t.Run("checkpoint-jwt-domain-separation", func(t *testing.T) { testRealVaultDomainSeparation(ctx, t, bc) })

	// After a rotation, JWTs keep the previous version's kid until the new
	// version is DefaultPublishDelay old (Vault's creation_time), then use it.
	t.Run("ok/jwt-after-rotation-waits-for-publication", func(t *testing.T) {
		if _, err := root.Logical().WriteWithContext(ctx, "transit/keys/"+harness.VaultSigningKey+"/rotate", nil); err != nil {
			t.Fatal(err)
		}
		req := broker.MintRequest{
			IssuanceID: "iss_01JROT", Workload: "orders-client", Owner: "team-orders", SessionID: "ses_r",
			Grant: policies.Grant{Name: "orders-jwt", Kind: broker.KindJWT, JWT: &policies.JWTGrant{Audience: "orders-api", TransitKey: harness.VaultSigningKey}},
			TTL:   time.Minute,
		}
		for _, tc := range []struct {
			after time.Duration
			kid   string
		}{
			{0, harness.VaultSigningKey + ":1"},
			{vault.DefaultPublishDelay + time.Second, harness.VaultSigningKey + ":2"},
		} {
			now := time.Now().Add(tc.after)
			m, err := vault.NewJWTMinter(vault.JWTMinterOptions{Client: bc, PublicURL: "https://keytrail.test", Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			cred, err := m.Mint(ctx, req)
			if err != nil {
				t.Fatalf("Mint() %v after the rotation = %v", tc.after, err)
			}
			if cred.Fields["kid"] != tc.kid {
				t.Errorf("Mint() %v after the rotation: kid %v, want %s", tc.after, cred.Fields["kid"], tc.kid)
			}
		}
	})

	// The checkpoint signer follows the same rule on the key just rotated:
	// its checkpoints name version 1 until version 2 is DefaultPublishDelay
	// old, and each verifies with the JWKS keys.
	t.Run("ok/checkpoint-after-rotation-waits-for-publication", func(t *testing.T) {
		tk, err := vault.NewTransitKeys(vault.TransitKeysOptions{Client: bc, Keys: []string{harness.VaultSigningKey}})
		if err != nil {
			t.Fatal(err)
		}
		pubs, err := tk.PublicKeys(ctx)
		if err != nil {
			t.Fatalf("PublicKeys() = %v", err)
		}
		verify, err := vault.CheckpointVerifyFunc(jwksRoundTrip(t, pubs))
		if err != nil {
			t.Fatal(err)
		}
		msg := audit.CheckpointSigningInput("kt-rotation", 1, strings.Repeat("ab", 32))
		for _, tc := range []struct {
			after time.Duration
			kid   string
		}{
			{0, harness.VaultSigningKey + ":1"},
			{vault.DefaultPublishDelay + time.Second, harness.VaultSigningKey + ":2"},
		} {
			now := time.Now().Add(tc.after)
			s, err := vault.NewTransitCheckpointSigner(vault.TransitCheckpointSignerOptions{Client: bc, Key: harness.VaultSigningKey, Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			sig, err := s.Sign(ctx, msg)
			if err != nil {
				t.Fatalf("Sign() %v after the rotation = %v", tc.after, err)
			}
			if s.KeyID() != tc.kid {
				t.Errorf("Sign() %v after the rotation: key id %s, want %s", tc.after, s.KeyID(), tc.kid)
			}
			if err := verify(s.KeyID(), s.Alg(), msg, sig); err != nil {
				t.Errorf("checkpoint signed %v after the rotation does not verify with the JWKS: %v", tc.after, err)
			}
		}
	})

	// Raising min_decryption_version withdraws the older versions from the
	// JWKS at the next read (the documented way to pull a leaked version at
	// once), and both signers move to a version the JWKS serves.
	t.Run("ok/min-decryption-version-withdraws-older-versions", func(t *testing.T) {
		if _, err := root.Logical().WriteWithContext(ctx, "transit/keys/"+harness.VaultSigningKey+"/config", map[string]any{"min_decryption_version": 2}); err != nil {
			t.Fatal(err)
		}
		tk, err := vault.NewTransitKeys(vault.TransitKeysOptions{Client: bc, Keys: []string{harness.VaultSigningKey}})
		if err != nil {
			t.Fatal(err)
		}
		pubs, err := tk.PublicKeys(ctx)
		if err != nil {
			t.Fatalf("PublicKeys() = %v", err)
		}
		var kids []string
		for _, k := range pubs {
			kids = append(kids, k.KID)
		}
		want := harness.VaultSigningKey + ":2"
		if !slices.Equal(kids, []string{want}) {
			t.Errorf("JWKS kids after min_decryption_version 2 = %q, want [%s]", kids, want)
		}
		s, err := vault.NewTransitCheckpointSigner(vault.TransitCheckpointSignerOptions{Client: bc, Key: harness.VaultSigningKey})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Sign(ctx, audit.CheckpointSigningInput("kt-mindec", 1, strings.Repeat("cd", 32))); err != nil || s.KeyID() != want {
			t.Errorf("checkpoint Sign() = %v, key id %s; want nil, %s", err, s.KeyID(), want)
		}
	})

	// A flapping Vault that fails the JWKS's reads of the key (here a proxy
	// in front of Vault) and not the minter's: after a rotation the JWKS
	// keeps serving its last list, and JWTs keep its kid; once the JWKS
	// serves the new version again, JWTs use it DefaultPublishDelay later.
	// The clock is real time plus an offset, so Vault's creation_time of
	// the new version counts.
	t.Run("ok/jwt-kid-served-while-jwks-reads-fail", func(t *testing.T) {
		key := harness.VaultEd25519Key
		var down atomic.Bool
		target, err := url.Parse(v.Addr)
		if err != nil {
			t.Fatal(err)
		}
		rp := httputil.NewSingleHostReverseProxy(target)
		px := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if down.Load() && r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/transit/keys/") {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = io.WriteString(w, `{"errors":["flapping"]}`)
				return
			}
			rp.ServeHTTP(w, r)
		}))
		defer px.Close()
		jc, err := vault.NewClient(vault.ClientOptions{Address: px.URL, Token: bc.Token(), Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		var (
			mu     sync.Mutex
			offset time.Duration
		)
		clock := func() time.Time {
			mu.Lock()
			defer mu.Unlock()
			return time.Now().Add(offset)
		}
		advance := func(d time.Duration) {
			mu.Lock()
			offset += d
			mu.Unlock()
		}
		jwks, err := vault.NewTransitKeys(vault.TransitKeysOptions{Client: jc, Keys: []string{key}, Now: clock, Log: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		m, err := vault.NewJWTMinter(vault.JWTMinterOptions{Client: bc, PublicURL: "https://keytrail.test", Now: clock, Published: jwks})
		if err != nil {
			t.Fatal(err)
		}
		req := broker.MintRequest{
			IssuanceID: "iss_01JFLAP", Workload: "orders-client", Owner: "team-orders", SessionID: "ses_f",
			Grant: policies.Grant{Name: "orders-jwt", Kind: broker.KindJWT, JWT: &policies.JWTGrant{Audience: "orders-api", TransitKey: key}},
			TTL:   time.Minute,
		}
		mint := func(step, wantKID string) {
			t.Helper()
			cred, err := m.Mint(ctx, req)
			if err != nil {
				t.Fatalf("%s: Mint() = %v", step, err)
			}
			served, err := jwks.PublicKeys(ctx)
			if err != nil {
				t.Fatalf("%s: PublicKeys() = %v", step, err)
			}
			var kid string
			_, err = jwt.Parse(cred.AccessToken, func(tok *jwt.Token) (any, error) {
				kid, _ = tok.Header["kid"].(string)
				for _, k := range served {
					if k.KID == kid {
						return k.Key, nil
					}
				}
				return nil, jwt.ErrTokenUnverifiable
			}, jwt.WithValidMethods([]string{"EdDSA"}), jwt.WithIssuer("https://keytrail.test"), jwt.WithAudience("orders-api"),
				jwt.WithExpirationRequired(), jwt.WithTimeFunc(clock))
			if err != nil {
				t.Fatalf("%s: the JWT (kid %q) does not verify against the served JWKS: %v", step, kid, err)
			}
			if kid != wantKID {
				t.Errorf("%s: kid = %q, want %q", step, kid, wantKID)
			}
		}
		mint("before-rotation", key+":1")
		if _, err := root.Logical().WriteWithContext(ctx, "transit/keys/"+key+"/rotate", nil); err != nil {
			t.Fatal(err)
		}
		down.Store(true)
		advance(vault.DefaultPublishDelay + vault.DefaultKeyRefresh)
		mint("jwks-reads-fail", key+":1")
		down.Store(false)
		advance(vault.DefaultPublicKeysRetry)
		mint("jwks-back-new-version-waits", key+":1")
		advance(vault.DefaultPublishDelay)
		mint("new-version-served-long-enough", key+":2")
	})

	// Last, as it wipes the server: the harness restarts an empty dev server
	// on the same address and sets it up again; Kill ends it at once.
	t.Run("ok/harness-restart-and-kill", func(t *testing.T) {
		before, err := v.Client.Auth().Token().CreateWithContext(ctx, &vaultapi.TokenCreateRequest{Policies: []string{"default"}, TTL: "1h"})
		if err != nil {
			t.Fatal(err)
		}
		addr := v.Addr
		if err := v.Restart(ctx); err != nil {
			t.Fatalf("Restart() = %v", err)
		}
		if v.Addr != addr {
			t.Errorf("Addr after Restart() = %q, want %q", v.Addr, addr)
		}
		if _, err := tokenClient(t, v.Client, before.Auth.ClientToken).Auth().Token().LookupSelfWithContext(ctx); err == nil {
			t.Errorf("token from before Restart() still valid, want the dev server's state gone")
		}
		sec, err := v.Client.Logical().ReadWithContext(ctx, "transit/keys/"+harness.VaultSigningKey)
		if err != nil || sec == nil || sec.Data["type"] != "ecdsa-p256" {
			t.Errorf("transit key after Restart() = %v, %v; want it set up again", sec, err)
		}
		if err := v.Kill(); err != nil {
			t.Fatalf("Kill() = %v", err)
		}
		select {
		case <-v.Done():
		default:
			t.Errorf("Done() not closed after Kill()")
		}
		if err := vault.Health(ctx, v.Client); !errors.Is(err, broker.ErrUnavailable) {
			t.Errorf("Health(killed vault) = %v, want ErrUnavailable", err)
		}
	})
}

// tokenClient is a client using token.
func tokenClient(t *testing.T, base *vaultapi.Client, token string) *vaultapi.Client {
	t.Helper()
	c, err := base.Clone()
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(token)
	return c
}

// findAudit returns the auth block of the audit request entry for path whose
// token metadata names issuanceID. Vault writes audit entries before it
// answers, so the entry is there once the request returned.
func findAudit(t *testing.T, file, path, issuanceID string) map[string]any {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatalf("open audit log: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 4<<20)
	for sc.Scan() {
		var e struct {
			Type    string         `json:"type"`
			Auth    map[string]any `json:"auth"`
			Request struct {
				Path string `json:"path"`
			} `json:"request"`
		}
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("audit line is not JSON: %v", err)
		}
		md, _ := e.Auth["metadata"].(map[string]any)
		if e.Type == "request" && e.Request.Path == path && md["issuance_id"] == issuanceID {
			return e.Auth
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	t.Fatalf("no audit request entry for %s with auth.metadata.issuance_id=%s in %s", path, issuanceID, file)
	return nil
}
