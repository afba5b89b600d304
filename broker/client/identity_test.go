package client

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestFileIdentityIsReadOnEveryExchange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	fb := newFakeBroker(t, okReply("iss_1", 60))
	c, err := New(Options{Addr: fb.srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	o := ExchangeOptions{Identity: FileIdentity{Path: path}}
	for _, tok := range []string{"jwt-one\n", "jwt-two", "  jwt-three  \n"} {
		if err := os.WriteFile(path, []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exchange(context.Background(), "g", o); err != nil {
			t.Fatalf("Exchange: %v", err)
		}
	}
	var got []string
	for _, f := range fb.sent() {
		got = append(got, f.Get("subject_token"))
	}
	if diff := cmp.Diff([]string{"jwt-one", "jwt-two", "jwt-three"}, got); diff != "" {
		t.Errorf("subject tokens sent after rotations (-want +got):\n%s", diff)
	}
}

func TestIdentitySourceFailures(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte(" \n"), 0o600)
	two := filepath.Join(dir, "two")
	os.WriteFile(two, []byte("a b"), 0o600)
	big := filepath.Join(dir, "big")
	os.WriteFile(big, []byte(strings.Repeat("a", maxIdentityToken+1)), 0o600)
	env := map[string]string{"SET": "tok", "EMPTY": ""}
	getenv := func(k string) string { return env[k] }
	tests := []struct {
		name    string
		src     IdentitySource
		want    string // token, or "" for an error
		wantMsg string
		// transient: retrying can help (an empty file is one being
		// written in place, as spiffe-helper does: truncate, then write).
		transient bool
	}{
		{"ok/env", EnvIdentity{Name: "SET", Getenv: getenv}, "tok", "", false},
		{"fail/missing-file", FileIdentity{Path: filepath.Join(dir, "nope")}, "", "identity token from file " + filepath.Join(dir, "nope") + ": no such file or directory", false},
		{"fail/empty-file-is-transient", FileIdentity{Path: empty}, "", ": empty", true},
		{"fail/two-tokens", FileIdentity{Path: two}, "", "contains whitespace", false},
		{"fail/too-big", FileIdentity{Path: big}, "", "larger than", false},
		{"fail/env-unset", EnvIdentity{Name: "UNSET", Getenv: getenv}, "", "identity token from $UNSET: not set or empty", false},
		{"fail/env-empty", EnvIdentity{Name: "EMPTY", Getenv: getenv}, "", "not set or empty", false},
	}
	for _, tc := range tests {
		got, err := tc.src.IdentityToken(context.Background())
		if got != tc.want {
			t.Errorf("IdentityToken(%s) = %q, want %q", tc.name, got, tc.want)
		}
		if tc.wantMsg == "" {
			if err != nil {
				t.Errorf("IdentityToken(%s) error = %v, want none", tc.name, err)
			}
			continue
		}
		var ie *IdentityError
		if !errors.As(err, &ie) || IsPermanent(err) == tc.transient || IsTransient(err) != tc.transient || !strings.Contains(err.Error(), tc.wantMsg) {
			t.Errorf("IdentityToken(%s) error = %v (permanent %v), want an IdentityError containing %q, transient %v", tc.name, err, IsPermanent(err), tc.wantMsg, tc.transient)
		}
	}
	// The default file is the Kubernetes projected token path.
	if got := (FileIdentity{}).Describe(); got != "file /var/run/secrets/tokens/keytrail" {
		t.Errorf("FileIdentity{}.Describe() = %q", got)
	}
}

// fakeGitHub is the Actions runtime token endpoint.
type fakeGitHub struct {
	status   int
	body     string
	gotQuery []string
	gotAuth  string
}

func (f *fakeGitHub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet || r.URL.Path != "/_apis/token" {
		http.Error(w, "unexpected", http.StatusTeapot)
		return
	}
	f.gotQuery = append(f.gotQuery, r.URL.RawQuery)
	f.gotAuth = r.Header.Get("Authorization")
	w.WriteHeader(f.status)
	w.Write([]byte(f.body))
}

func TestGitHubActionsIdentity(t *testing.T) {
	tests := []struct {
		name          string
		status        int
		body          string
		audience      string
		want          string
		wantQuery     string
		wantTransient bool
		wantErr       bool
	}{
		{"ok/default-audience", 200, `{"count":1,"value":"gh.jwt"}`, "", "gh.jwt", "api-version=2.0&audience=keytrail", false, false},
		{"ok/custom-audience", 200, `{"value":"gh.jwt"}`, "broker-prod", "gh.jwt", "api-version=2.0&audience=broker-prod", false, false},
		{"fail/503-transient", 503, `oops`, "", "", "api-version=2.0&audience=keytrail", true, true},
		{"fail/429-transient", 429, `{}`, "", "", "api-version=2.0&audience=keytrail", true, true},
		{"fail/403-permanent", 403, `{"message":"no id-token permission"}`, "", "", "api-version=2.0&audience=keytrail", false, true},
		{"fail/malformed", 200, `{"value":`, "", "", "api-version=2.0&audience=keytrail", false, true},
		{"fail/empty-value", 200, `{"value":""}`, "", "", "api-version=2.0&audience=keytrail", false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			gh := &fakeGitHub{status: tc.status, body: tc.body}
			srv := httptest.NewServer(gh)
			defer srv.Close()
			env := map[string]string{EnvGitHubRequestURL: srv.URL + "/_apis/token?api-version=2.0", EnvGitHubRequestToken: "RUNTIME-TOKEN"}
			src, err := NewGitHubActionsIdentity(GitHubActionsFromEnv(func(k string) string { return env[k] }, tc.audience))
			if err != nil {
				t.Fatal(err)
			}
			got, err := src.IdentityToken(context.Background())
			if got != tc.want || (err != nil) != tc.wantErr || IsTransient(err) != tc.wantTransient {
				t.Errorf("IdentityToken = %q, %v (transient %v), want %q, error %v, transient %v", got, err, IsTransient(err), tc.want, tc.wantErr, tc.wantTransient)
			}
			if err != nil && strings.Contains(err.Error(), "RUNTIME-TOKEN") {
				t.Errorf("error %q carries the runtime token", err)
			}
			if diff := cmp.Diff([]string{tc.wantQuery}, gh.gotQuery); diff != "" {
				t.Errorf("query (-want +got):\n%s", diff)
			}
			if gh.gotAuth != "Bearer RUNTIME-TOKEN" {
				t.Errorf("Authorization = %q", gh.gotAuth)
			}
		})
	}
}

func TestGitHubActionsIdentityNeedsEnvironment(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
	}{
		{"fail/not-set", map[string]string{}},
		{"fail/no-token", map[string]string{EnvGitHubRequestURL: "https://pipelines.actions.githubusercontent.com/x"}},
		{"fail/plain-http-remote", map[string]string{EnvGitHubRequestURL: "http://example.com/x", EnvGitHubRequestToken: "t"}},
	}
	for _, tc := range tests {
		_, err := NewGitHubActionsIdentity(GitHubActionsFromEnv(func(k string) string { return tc.env[k] }, ""))
		if err == nil || !IsPermanent(err) {
			t.Errorf("NewGitHubActionsIdentity(%s) = %v, want a permanent error", tc.name, err)
		}
	}
	_, err := NewGitHubActionsIdentity(GitHubActionsOptions{})
	if err == nil || !strings.Contains(err.Error(), "id-token: write") {
		t.Errorf("error %v does not say which permission to add", err)
	}
}

// TestGitHubActionsIdentityDoesNotFollowRedirects: a redirect from the
// token endpoint would make net/http re-send the runtime's request token
// (same host, any port or scheme) and accept an identity token from
// wherever it points. The identity source refuses to follow.
func TestGitHubActionsIdentityDoesNotFollowRedirects(t *testing.T) {
	var mu sync.Mutex
	var leaked []string
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		leaked = append(leaked, r.Header.Get("Authorization"))
		mu.Unlock()
		w.Write([]byte(`{"value":"forged.jwt"}`))
	}))
	defer target.Close()
	gh := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+"/x", http.StatusFound)
	}))
	defer gh.Close()
	src, err := NewGitHubActionsIdentity(GitHubActionsOptions{RequestURL: gh.URL + "/t", RequestToken: "RUNTIME-TOKEN"})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := src.IdentityToken(context.Background())
	if err == nil {
		t.Errorf("IdentityToken = %q, nil; want an error", tok)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(leaked) > 0 {
		t.Errorf("redirect followed; target got Authorization %q", leaked)
	}
}
