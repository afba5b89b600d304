package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
)

func TestParseTokenLookup(t *testing.T) {
	meta := map[string]any{"issuance_id": "iss_1", "workload": "app", "owner": "team", "session_id": "ses_1", "grant": "g"}
	now := time.Unix(1700000600, 0) // the broker's clock
	at := func(secs int64) json.Number { return json.Number(fmt.Sprint(secs)) }
	tests := []struct {
		name       string
		data       map[string]any
		deployment string // the inventory's
		want       *broker.TaggedCredential
		wantErr    bool
	}{
		{
			name: "ok/keytrail-token",
			data: map[string]any{"accessor": "acc", "meta": meta, "display_name": "token-keytrail-app", "creation_time": json.Number("1700000000"), "expire_time": "2023-11-14T22:28:20Z"},
			want: &broker.TaggedCredential{Kind: broker.KindVaultToken, Ref: "acc", IssuanceID: "iss_1", Workload: "app", Owner: "team",
				SessionID: "ses_1", Grant: "g", CreatedAt: time.Unix(1700000000, 0), ExpiresAt: time.Date(2023, 11, 14, 22, 28, 20, 0, time.UTC)},
		},
		{
			// A DynamicMinter reader token (display name
			// "<issuance id>-<workload>"): its orphan_revoked event must
			// name the kind of the credential it holds, vault_dynamic.
			name: "ok/dynamic-reader-token",
			data: map[string]any{"accessor": "acc", "meta": meta, "display_name": "token-iss-1-app"},
			want: &broker.TaggedCredential{Kind: broker.KindVaultDynamic, Ref: "acc", IssuanceID: "iss_1", Workload: "app", Owner: "team",
				SessionID: "ses_1", Grant: "g"},
		},
		{
			name: "ok/vault-token-display-name",
			data: map[string]any{"accessor": "acc", "meta": meta, "display_name": "token-keytrail-app"},
			want: &broker.TaggedCredential{Kind: broker.KindVaultToken, Ref: "acc", IssuanceID: "iss_1", Workload: "app", Owner: "team",
				SessionID: "ses_1", Grant: "g"},
		},
		{
			// Vault stores the display name sanitized.
			name: "ok/sanitized-workload",
			data: map[string]any{"accessor": "acc", "display_name": "token-keytrail-spiffe---prod-pay",
				"meta": map[string]any{"issuance_id": "iss_1", "workload": "spiffe://prod/pay"}},
			want: &broker.TaggedCredential{Kind: broker.KindVaultToken, Ref: "acc", IssuanceID: "iss_1", Workload: "spiffe://prod/pay"},
		},
		// Tokens keytrail did not make are not listed, whatever their
		// meta says: the reconciliation would revoke them.
		{
			// A reader token of another issuance with this meta (edited
			// or copied) is not taken for this issuance's.
			name: "ok/other-issuance-display-name",
			data: map[string]any{"accessor": "acc", "meta": meta, "display_name": "token-iss-2-app"},
		},
		{
			name: "ok/foreign-token-with-issuance-meta",
			data: map[string]any{"accessor": "acc", "meta": meta, "display_name": "token-ci-deploy", "creation_time": json.Number("1700000000")},
		},
		{name: "ok/other-workload-display-name", data: map[string]any{"accessor": "acc", "meta": meta, "display_name": "token-keytrail-billing"}},
		{name: "ok/no-display-name", data: map[string]any{"accessor": "acc", "meta": meta}},
		{name: "ok/no-workload", data: map[string]any{"accessor": "acc", "display_name": "token-keytrail-", "meta": map[string]any{"issuance_id": "iss_1"}}},
		{
			// Vault's clock is 10 minutes behind the broker's: by its
			// creation_time the token looks 10 minutes old, by Vault's
			// own count (creation_ttl - ttl) it was minted 5 s ago. The
			// reconciliation must see a fresh token, which an exchange
			// may not have recorded yet.
			name: "ok/vault-clock-behind",
			data: map[string]any{"accessor": "acc", "meta": meta, "display_name": "token-keytrail-app",
				"creation_time": at(1700000600 - 600 - 5), "creation_ttl": json.Number("3600"), "ttl": json.Number("3595")},
			want: &broker.TaggedCredential{Kind: broker.KindVaultToken, Ref: "acc", IssuanceID: "iss_1", Workload: "app", Owner: "team",
				SessionID: "ses_1", Grant: "g", CreatedAt: now.Add(-4 * time.Second)},
		},
		{
			// Vault's clock is ahead: creation_time is the later one.
			name: "ok/vault-clock-ahead",
			data: map[string]any{"accessor": "acc", "meta": meta, "display_name": "token-keytrail-app",
				"creation_time": at(1700000600 + 30), "creation_ttl": json.Number("3600"), "ttl": json.Number("3598")},
			want: &broker.TaggedCredential{Kind: broker.KindVaultToken, Ref: "acc", IssuanceID: "iss_1", Workload: "app", Owner: "team",
				SessionID: "ses_1", Grant: "g", CreatedAt: time.Unix(1700000630, 0)},
		},
		{
			name: "ok/clocks-agree",
			data: map[string]any{"accessor": "acc", "meta": meta, "display_name": "token-keytrail-app",
				"creation_time": at(1700000600 - 120), "creation_ttl": json.Number("3600"), "ttl": json.Number("3480")},
			want: &broker.TaggedCredential{Kind: broker.KindVaultToken, Ref: "acc", IssuanceID: "iss_1", Workload: "app", Owner: "team",
				SessionID: "ses_1", Grant: "g", CreatedAt: now.Add(-119 * time.Second)},
		},
		{
			name: "ok/age-without-creation-time",
			data: map[string]any{"accessor": "acc", "meta": meta, "display_name": "token-keytrail-app", "creation_ttl": 60.0, "ttl": 50.0},
			want: &broker.TaggedCredential{Kind: broker.KindVaultToken, Ref: "acc", IssuanceID: "iss_1", Workload: "app", Owner: "team",
				SessionID: "ses_1", Grant: "g", CreatedAt: now.Add(-9 * time.Second)},
		},
		// Two keytrail deployments share one Vault: a token whose meta
		// names the other deployment is not this one's to judge.
		{
			name: "ok/own-deployment", deployment: "dep-a",
			data: map[string]any{"accessor": "acc", "meta": withMeta(meta, "deployment", "dep-a"), "display_name": "token-keytrail-app"},
			want: &broker.TaggedCredential{Kind: broker.KindVaultToken, Ref: "acc", IssuanceID: "iss_1", Workload: "app", Owner: "team",
				SessionID: "ses_1", Grant: "g"},
		},
		{
			name: "ok/other-deployment-not-listed", deployment: "dep-a",
			data: map[string]any{"accessor": "acc", "meta": withMeta(meta, "deployment", "dep-b"), "display_name": "token-keytrail-app"},
		},
		{
			name: "ok/other-deployment-reader-token-not-listed", deployment: "dep-a",
			data: map[string]any{"accessor": "acc", "meta": withMeta(meta, "deployment", "dep-b"), "display_name": "token-iss-1-app"},
		},
		{
			// Minted before deployments were tagged: this deployment's.
			name: "ok/no-deployment-meta-is-own", deployment: "dep-a",
			data: map[string]any{"accessor": "acc", "meta": meta, "display_name": "token-keytrail-app"},
			want: &broker.TaggedCredential{Kind: broker.KindVaultToken, Ref: "acc", IssuanceID: "iss_1", Workload: "app", Owner: "team",
				SessionID: "ses_1", Grant: "g"},
		},
		{
			// An inventory without a deployment lists every deployment's.
			name: "ok/no-own-deployment-lists-all",
			data: map[string]any{"accessor": "acc", "meta": withMeta(meta, "deployment", "dep-b"), "display_name": "token-keytrail-app"},
			want: &broker.TaggedCredential{Kind: broker.KindVaultToken, Ref: "acc", IssuanceID: "iss_1", Workload: "app", Owner: "team",
				SessionID: "ses_1", Grant: "g"},
		},
		{name: "fail/bad-ttl", data: map[string]any{"accessor": "acc", "meta": meta, "display_name": "token-keytrail-app", "creation_ttl": json.Number("60"), "ttl": "soon"}, wantErr: true},
		{name: "ok/root-token-no-meta", data: map[string]any{"accessor": "acc", "meta": nil, "creation_time": json.Number("1"), "expire_time": nil}},
		{name: "ok/other-meta", data: map[string]any{"accessor": "acc", "meta": map[string]any{"team": "x"}}},
		{name: "fail/other-accessor", data: map[string]any{"accessor": "zzz", "meta": meta, "display_name": "token-keytrail-app"}, wantErr: true},
		{name: "fail/bad-creation-time", data: map[string]any{"accessor": "acc", "meta": meta, "display_name": "token-keytrail-app", "creation_time": "soon"}, wantErr: true},
		{name: "fail/bad-expire-time", data: map[string]any{"accessor": "acc", "meta": meta, "display_name": "token-keytrail-app", "expire_time": "tomorrow"}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseTokenLookup("acc", tc.data, now, tc.deployment)
			if (err != nil) != tc.wantErr {
				t.Fatalf("parseTokenLookup() error = %v, want error %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("parseTokenLookup() = %+v, want %+v (-want +got):\n%s", got, tc.want, diff)
			}
		})
	}
}

// withMeta returns a copy of meta with k set to v.
func withMeta(meta map[string]any, k, v string) map[string]any {
	out := maps.Clone(meta)
	out[k] = v
	return out
}

func TestTokenInventory(t *testing.T) {
	lookups := map[string]string{
		"acc_kt":   `{"data":{"accessor":"acc_kt","display_name":"token-keytrail-app","creation_time":1700000000,"expire_time":"2023-11-14T22:28:20Z","meta":{"issuance_id":"iss_1","workload":"app"}}}`,
		"acc_root": `{"data":{"accessor":"acc_root","display_name":"root","creation_time":1700000000,"expire_time":null,"meta":null}}`,
		// Another Vault user's token whose meta happens to carry an
		// issuance_id: not keytrail's (not listed, so never revoked).
		"acc_foreign": `{"data":{"accessor":"acc_foreign","display_name":"token-ci-deploy","creation_time":1700000000,"meta":{"issuance_id":"iss_9","workload":"app"}}}`,
	}
	f := newFakeVault(t, map[string]http.HandlerFunc{
		"GET /v1/auth/token/accessors": func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Query().Get("list") != "true" {
				t.Errorf("accessors listed without list=true")
			}
			reply(w, 200, map[string]any{"data": map[string]any{"keys": []string{"acc_kt", "acc_root", "acc_foreign", "acc_gone", "acc_dying"}}})
		},
		"PUT /v1/auth/token/lookup-accessor": func(w http.ResponseWriter, r *http.Request) {
			acc, _ := decodeBody(t, r)["accessor"].(string)
			if body, ok := lookups[acc]; ok {
				replyRaw(200, body)(w, r)
				return
			}
			if acc == "acc_dying" {
				replyRaw(403, `{"errors":["permission denied"]}`)(w, r)
				return
			}
			replyRaw(400, `{"errors":["invalid accessor"]}`)(w, r)
		},
		"PUT /v1/auth/token/revoke-accessor": func(w http.ResponseWriter, r *http.Request) {
			switch acc, _ := decodeBody(t, r)["accessor"].(string); acc {
			case "acc_gone": // Vault before 1.10
				replyRaw(400, `{"errors":["invalid accessor"]}`)(w, r)
			case "acc_expired": // Vault 1.10 and later
				replyRaw(200, `{"data":null,"warnings":["No token found with this accessor"]}`)(w, r)
			default:
				w.WriteHeader(204)
			}
		},
	})
	inv, err := NewTokenInventory(TokenInventoryOptions{Client: f.client(t), Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	got, err := inv.ListTagged(ctx, nil)
	if err != nil {
		t.Fatalf("ListTagged() error = %v", err)
	}
	want := []broker.TaggedCredential{{Kind: broker.KindVaultToken, Ref: "acc_kt", IssuanceID: "iss_1", Workload: "app",
		CreatedAt: time.Unix(1700000000, 0), ExpiresAt: time.Date(2023, 11, 14, 22, 28, 20, 0, time.UTC)}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ListTagged() = %+v, want %+v (-want +got):\n%s", got, want, diff)
	}
	if n := f.count("PUT /v1/auth/token/lookup-accessor"); n != 5 {
		t.Errorf("lookups = %d, want 5", n)
	}

	// Second listing: the untagged root and foreign tokens are not looked up again, and
	// what skip claims is neither looked up nor returned.
	var asked []string
	got, err = inv.ListTagged(ctx, func(as []string) []bool {
		asked = append(asked, as...)
		out := make([]bool, len(as))
		for i, a := range as {
			out[i] = a == "acc_kt"
		}
		return out
	})
	if err != nil || len(got) != 0 {
		t.Fatalf("ListTagged(skip acc_kt) = %+v, %v; want none", got, err)
	}
	slices.Sort(asked)
	if diff := cmp.Diff([]string{"acc_dying", "acc_gone", "acc_kt"}, asked); diff != "" {
		t.Errorf("skip asked about (-want +got):\n%s", diff)
	}
	if n := f.count("PUT /v1/auth/token/lookup-accessor"); n != 7 {
		t.Errorf("lookups after the second listing = %d, want 7 (acc_gone and acc_dying again)", n)
	}

	if err := inv.RevokeTagged(ctx, broker.TaggedCredential{Ref: "acc_kt"}); err != nil {
		t.Errorf("RevokeTagged(acc_kt) = %v, want nil", err)
	}
	// A token Vault no longer has was not revoked by this call: the
	// reconciliation must not record an orphan_revoked event for it.
	for _, acc := range []string{"acc_gone", "acc_expired"} {
		if err := inv.RevokeTagged(ctx, broker.TaggedCredential{Ref: acc}); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("RevokeTagged(%s) = %v, want ErrNotFound", acc, err)
		}
	}
	if err := inv.RevokeTagged(ctx, broker.TaggedCredential{}); err == nil {
		t.Errorf("RevokeTagged(no accessor) = nil, want an error")
	}
}

func TestTokenInventoryListFailure(t *testing.T) {
	f := newFakeVault(t, map[string]http.HandlerFunc{
		"GET /v1/auth/token/accessors": replyRaw(403, `{"errors":["permission denied"]}`),
	})
	inv, err := NewTokenInventory(TokenInventoryOptions{Client: f.client(t)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = inv.ListTagged(context.Background(), nil)
	if got, want := shapeOf(err), (errShape{Kind: "temporarily unavailable", Reason: ReasonDenied}); got != want {
		t.Errorf("ListTagged() error = %+v, want %+v", got, want)
	}

	// A token that may not look up anything gets 403 for every accessor.
	f2 := newFakeVault(t, map[string]http.HandlerFunc{
		"GET /v1/auth/token/accessors": func(w http.ResponseWriter, r *http.Request) {
			reply(w, 200, map[string]any{"data": map[string]any{"keys": []string{"a1", "a2"}}})
		},
		"PUT /v1/auth/token/lookup-accessor": replyRaw(403, `{"errors":["permission denied"]}`),
	})
	inv2, err := NewTokenInventory(TokenInventoryOptions{Client: f2.client(t)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = inv2.ListTagged(context.Background(), nil)
	if got, want := shapeOf(err), (errShape{Kind: "temporarily unavailable", Reason: ReasonDenied}); got != want {
		t.Errorf("ListTagged(every lookup denied) error = %+v, want %+v", got, want)
	}
	// The same when skip spared some of them the lookup: every lookup made
	// was denied.
	_, err = inv2.ListTagged(context.Background(), func(as []string) []bool {
		out := make([]bool, len(as))
		for i, a := range as {
			out[i] = a == "a1"
		}
		return out
	})
	if got, want := shapeOf(err), (errShape{Kind: "temporarily unavailable", Reason: ReasonDenied}); got != want {
		t.Errorf("ListTagged(every lookup made denied, one skipped) error = %+v, want %+v", got, want)
	}
	if _, err := NewTokenInventory(TokenInventoryOptions{}); err == nil {
		t.Errorf("NewTokenInventory(no client) = nil error, want one")
	}
}

// TestTokenInventorySkipBatches: skip is asked about every accessor once,
// skipBatch at a time, and what it claims is not looked up.
func TestTokenInventorySkipBatches(t *testing.T) {
	const n = 2*skipBatch + 452
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("acc_%05d", i)
	}
	f := newFakeVault(t, map[string]http.HandlerFunc{
		"GET /v1/auth/token/accessors": func(w http.ResponseWriter, r *http.Request) {
			reply(w, 200, map[string]any{"data": map[string]any{"keys": keys}})
		},
		"PUT /v1/auth/token/lookup-accessor": replyRaw(400, `{"errors":["invalid accessor"]}`),
	})
	inv, err := NewTokenInventory(TokenInventoryOptions{Client: f.client(t)})
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int
	asked := map[string]int{}
	got, err := inv.ListTagged(context.Background(), func(as []string) []bool {
		sizes = append(sizes, len(as))
		out := make([]bool, len(as))
		for i, a := range as {
			asked[a]++
			out[i] = a != "acc_00007" // everything but one is explained
		}
		return out
	})
	if err != nil || len(got) != 0 {
		t.Fatalf("ListTagged() = %v, %v; want none, nil", got, err)
	}
	if diff := cmp.Diff([]int{skipBatch, skipBatch, 452}, sizes); diff != "" {
		t.Errorf("skip called with batches of (-want +got):\n%s", diff)
	}
	for _, k := range keys {
		if asked[k] != 1 {
			t.Errorf("skip asked about %s %d times, want once", k, asked[k])
		}
	}
	if lookups := f.count("PUT /v1/auth/token/lookup-accessor"); lookups != 1 {
		t.Errorf("lookups = %d, want 1 (the accessor skip did not claim)", lookups)
	}
}
