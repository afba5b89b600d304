package vault

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/policies"
)

// DefaultTimeout is the per-request timeout when ClientOptions.Timeout is 0.
const DefaultTimeout = 10 * time.Second

// MaxIdleConnsPerHost is how many idle connections to Vault the client keeps.
// vaultapi.DefaultConfig keeps GOMAXPROCS+1 (3 on 2 cores): with more
// exchanges in flight than that, every extra request opened a new TCP (and
// TLS) connection and closed it afterwards, which cost both the broker and
// Vault CPU on every exchange (issue #9, scenario B).
const MaxIdleConnsPerHost = 64

// ClientOptions configure NewClient. Exactly one of Token and TokenFile is
// set, unless NoToken says a Login (AppRole, Kubernetes) sets the token.
type ClientOptions struct {
	Address   string        // e.g. https://vault.internal:8200 (required)
	Token     string        // the broker's Vault token
	TokenFile string        // or a file holding it (read once, trimmed)
	NoToken   bool          // no token yet: a Login will set it
	CAFile    string        // PEM bundle to verify Vault's certificate; empty = system roots
	Timeout   time.Duration // per request; 0 = DefaultTimeout
	// Namespace is the Vault Enterprise / HCP Vault namespace every
	// request goes to (X-Vault-Namespace, e.g. "admin" or "admin/team");
	// empty: the root namespace.
	Namespace string
}

// ErrTokenRequired is NewClient's error when neither or both of Token and
// TokenFile are set without NoToken.
var ErrTokenRequired = errors.New("vault: exactly one of token and token_file is required")

// NewClient returns a Vault client for the broker.
//
// It starts from vaultapi.DefaultConfig (which reads VAULT_* variables) and
// then overrides everything that matters, so the environment cannot change
// where the broker talks to, with which token, or how TLS is checked:
// address, agent address, TLS settings, namespace, extra headers, rate
// limiter, SRV lookup and redirects are reset; the token and the namespace
// come only from the options (vault/api itself never reads ~/.vault-token).
//
// MaxRetries is 0: vault/api retries 5xx and connection errors twice by
// default, and a retried create can leave a credential in Vault that nobody
// recorded. Callers that want to retry do so above, with a new issuance id.
// Timeout bounds each request (vault/api applies it as a context deadline);
// the caller's ctx still applies when shorter.
func NewClient(o ClientOptions) (*vaultapi.Client, error) {
	var errs []error
	u, err := url.Parse(o.Address)
	switch {
	case o.Address == "":
		errs = append(errs, errors.New("vault.address: required"))
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		errs = append(errs, errors.New("vault.address: must be an http:// or https:// URL"))
	}
	switch {
	case o.NoToken && (o.Token != "" || o.TokenFile != ""):
		errs = append(errs, errors.New("vault: a token or token_file cannot be combined with a login method"))
	case !o.NoToken && (o.Token == "") == (o.TokenFile == ""):
		errs = append(errs, ErrTokenRequired)
	}
	if o.Timeout < 0 {
		errs = append(errs, errors.New("vault.timeout: must not be negative"))
	}
	if err := CheckNamespace(o.Namespace); err != nil {
		errs = append(errs, fmt.Errorf("vault.namespace: %w", err))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	token := o.Token
	if o.TokenFile != "" {
		t, err := ReadCredentialFile(o.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("vault.token_file: %w", err)
		}
		token = t
	}
	timeout := o.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}

	cfg := vaultapi.DefaultConfig()
	if cfg.Error != nil {
		// vaultapi.NewClient would fail the same way: a VAULT_* variable is malformed.
		return nil, fmt.Errorf("vault: default configuration (check VAULT_* environment variables): %w", cfg.Error)
	}
	cfg.Address = o.Address
	cfg.AgentAddress = ""
	cfg.MaxRetries = 0
	cfg.Timeout = timeout
	cfg.Limiter = nil
	cfg.SRVLookup = false
	cfg.DisableRedirects = false
	cfg.ReadYourWrites = false
	tr, ok := cfg.HttpClient.Transport.(*http.Transport)
	if !ok {
		return nil, fmt.Errorf("vault: unexpected transport %T", cfg.HttpClient.Transport)
	}
	// Drop whatever VAULT_SKIP_VERIFY, VAULT_CACERT, VAULT_CLIENT_CERT,
	// VAULT_TLS_SERVER_NAME or VAULT_HTTP_PROXY put there; keep the ALPN list
	// http2.ConfigureTransport set.
	var nextProtos []string
	if tr.TLSClientConfig != nil {
		nextProtos = tr.TLSClientConfig.NextProtos
	}
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: nextProtos}
	tr.Proxy = http.ProxyFromEnvironment
	tr.MaxIdleConnsPerHost = MaxIdleConnsPerHost
	if tr.MaxIdleConns < MaxIdleConnsPerHost {
		tr.MaxIdleConns = MaxIdleConnsPerHost
	}
	if o.CAFile != "" {
		pool, err := LoadCAFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("vault.ca_file: %w", err)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("vault: new client: %w", err)
	}
	// translate hides this address's path in the errors of its requests.
	rememberAddress(o.Address)
	// Vault's Retry-After on a 429 reaches translate (a clone does not keep
	// callbacks: NewLogin and DynamicMinter set it on theirs).
	c = c.WithResponseCallbacks(noteRetryAfter)
	c.SetToken(token)
	c.SetHeaders(http.Header{vaultapi.RequestHeaderName: []string{"true"}}) // drops VAULT_NAMESPACE's too
	if o.Namespace != "" {
		c.SetNamespace(o.Namespace) // after SetHeaders, which replaces every header
	}
	return c, nil
}

// CheckNamespace validates a Vault namespace path (vault.namespace): empty
// (the root namespace), or names separated by single slashes, without
// spaces or control characters, with at most one leading and one trailing
// slash ("admin", "admin/team/").
func CheckNamespace(ns string) error {
	if ns == "" {
		return nil
	}
	p := strings.TrimSuffix(strings.TrimPrefix(ns, "/"), "/")
	if p == "" {
		return fmt.Errorf("%q: the root namespace is the empty value", ns)
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "" {
			return fmt.Errorf("%q: empty path segment", ns)
		}
		if strings.ContainsFunc(seg, func(r rune) bool { return r <= ' ' || r == 0x7f || unicode.IsSpace(r) }) {
			return fmt.Errorf("%q: spaces and control characters are not allowed", ns)
		}
	}
	return nil
}

// CloseIdleConnections closes c's idle keep-alive connections to Vault (and
// those of every client cloned from it: clones share its HTTP client). Call
// it once the broker has stopped using c, on shutdown: otherwise they stay
// open, each with two goroutines, until Vault's idle timeout.
func CloseIdleConnections(c *vaultapi.Client) {
	if hc := c.CloneConfig().HttpClient; hc != nil {
		hc.CloseIdleConnections()
	}
}

// LoadCAFile reads the PEM bundle that verifies Vault's certificate
// (vault.ca_file; store.ca_file and tls.client_ca_file too): the one reader
// of that file, for NewClient, the server and keytrail config check. Every
// error names the file. The file is read as the config file is
// (policies.ReadFile): a regular file, symlinks followed, of at most
// policies.MaxFileSize bytes; a named pipe, a device or a directory is
// refused, naming it and what it is, instead of blocking forever or being
// read until memory runs out.
func LoadCAFile(path string) (*x509.CertPool, error) {
	pool, _, err := ReadCAFile(path)
	return pool, err
}

// ReadCAFile is LoadCAFile that also returns the bundle's bytes, for a
// caller that looks at the certificates further (keytrail config check
// judges their dates) without reading the file a second time.
func ReadCAFile(path string) (*x509.CertPool, []byte, error) {
	b, err := policies.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return pool, b, nil
}
