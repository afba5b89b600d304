package vault

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker"
)

const brokerToken = "hvs.broker-token-for-tests"

// fakeVault is an httptest Vault that fails the test on any request it was
// not told to expect, and counts calls per "METHOD /path".
type fakeVault struct {
	t      *testing.T
	srv    *httptest.Server
	routes map[string]http.HandlerFunc

	mu    sync.Mutex
	calls map[string]int
}

func newFakeVault(t *testing.T, routes map[string]http.HandlerFunc) *fakeVault {
	t.Helper()
	f := &fakeVault{t: t, routes: routes, calls: map[string]int{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeVault) serve(w http.ResponseWriter, r *http.Request) {
	key := r.Method + " " + r.URL.Path
	f.mu.Lock()
	f.calls[key]++
	f.mu.Unlock()
	if got := r.Header.Get("X-Vault-Token"); got != brokerToken {
		f.t.Errorf("%s: X-Vault-Token = %q, want the configured broker token", key, got)
	}
	if ns := r.Header.Get("X-Vault-Namespace"); ns != "" {
		f.t.Errorf("%s: X-Vault-Namespace = %q, want none", key, ns)
	}
	h, ok := f.routes[key]
	if !ok {
		f.t.Errorf("fake vault: unexpected request %s", key)
		http.Error(w, `{"errors":["unexpected"]}`, http.StatusInternalServerError)
		return
	}
	h(w, r)
}

func (f *fakeVault) count(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[key]
}

func (f *fakeVault) total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		n += c
	}
	return n
}

func (f *fakeVault) client(t *testing.T) *vaultapi.Client {
	t.Helper()
	c, err := NewClient(ClientOptions{Address: f.srv.URL, Token: brokerToken, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	return c
}

// reply writes a JSON response.
func reply(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if body != nil {
		_ = json.NewEncoder(w).Encode(body)
	}
}

// replyRaw writes a literal body.
func replyRaw(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

// decodeBody reads a JSON request body as generic values.
func decodeBody(t *testing.T, r *http.Request) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
		t.Errorf("%s %s: body is not JSON: %v", r.Method, r.URL.Path, err)
	}
	return m
}

// errShape is what the tests compare of an error.
type errShape struct {
	Kind   string
	Reason string
}

func shapeOf(err error) errShape {
	if err == nil {
		return errShape{}
	}
	var be *broker.Error
	if !errors.As(err, &be) {
		return errShape{Kind: "not a *broker.Error", Reason: err.Error()}
	}
	return errShape{Kind: be.Kind.Error(), Reason: be.Reason}
}

var (
	unavailable = broker.ErrUnavailable.Error()
	invalid     = broker.ErrInvalidRequest.Error()
)
