package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.yaml.in/yaml/v3"

	"github.com/keytrail/keytrail/adapters/auditfile"
	vaultad "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/httpapi"
	"github.com/keytrail/keytrail/policies"
	"github.com/keytrail/keytrail/policies/yamlcheck"
)

// Config is the server configuration (SPEC "Server configuration"), decoded
// strictly. Secrets are referenced by file or environment, never inline.
type Config struct {
	Listen    string      `yaml:"listen"`
	PublicURL string      `yaml:"public_url"`
	Policy    string      `yaml:"policy"`
	Vault     VaultConfig `yaml:"vault"`
	Store     StoreConfig `yaml:"store"`
	Audit     AuditConfig `yaml:"audit"`
	TLS       *TLSConfig  `yaml:"tls"`
	Log       LogConfig   `yaml:"log"`
	// AllowPlainHTTP permits a plain-HTTP listener on a non-loopback address
	// (behind a TLS-terminating proxy). Off by default.
	AllowPlainHTTP bool `yaml:"allow_plain_http"`
	// TrustProxyHeaders takes the client address from X-Forwarded-For when
	// the request comes from one of TrustedProxies (required with it): the
	// rightmost entry that is not a trusted proxy (httpapi's clientIP).
	TrustProxyHeaders bool `yaml:"trust_proxy_headers"`
	// TrustedProxies are the front proxies' addresses or CIDRs
	// (httpapi.ParseTrustedProxy), as Vault's
	// x_forwarded_for_authorized_addrs.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// StartupTimeout bounds the start-up, from the listener bound to the
	// start event durable: past it the server logs what it was waiting
	// for and exits 1, so a supervisor restarts it (runServer). Absent:
	// DefaultStartupTimeout; 0: none.
	StartupTimeout *duration `yaml:"startup_timeout"`
	// ShutdownTimeout bounds graceful shutdown (default 20s).
	ShutdownTimeout duration `yaml:"shutdown_timeout"`
	// ShutdownDrain is how long, after SIGTERM, /readyz answers 503 while
	// the listener keeps serving, before the shutdown proper (default 0:
	// none).
	ShutdownDrain duration `yaml:"shutdown_drain"`
	// PprofListen, when set, serves Go's net/http/pprof on this loopback
	// host:port (profiling; off by default).
	PprofListen string `yaml:"pprof_listen"`
	// Authn tunes identity-token verification.
	Authn AuthnConfig `yaml:"authn"`
	// RefusalLimit bounds, per source address, the audit events of requests
	// refused before their caller authenticated (broker.RefusalLimits).
	RefusalLimit RefusalLimitConfig `yaml:"refusal_limit"`
	// IntrospectLimit bounds the introspections of authenticated callers
	// (broker.IntrospectLimits).
	IntrospectLimit IntrospectLimitConfig `yaml:"introspect_limit"`
	// Deployment names this keytrail deployment (the instances sharing one
	// store) in the meta of the Vault tokens it mints: the Vault token
	// reconciliation leaves another deployment's tokens alone. Default
	// (empty): the audit chain id or the id the Redis store holds, see
	// deploymentID.
	Deployment string `yaml:"deployment"`

	// vaultAddressFrom says what set Vault.Address, for messages:
	// "VAULT_ADDR", or "vault.address in FILE, line N" (LoadConfig); empty
	// for a configuration built in code.
	vaultAddressFrom string
	// file is the config file read (LoadConfig) and tokenFileLine the line
	// of its vault.token_file (0: not written), for vaultTokenProblem.
	file          string
	tokenFileLine int
}

// vaultTokenProblem says what the server's Vault client would of the
// broker's token, in the words both the server and config check use:
// without a login method (vault.auth, vault.approle) exactly one of
// VAULT_TOKEN (envToken: set in the environment) and vault.token_file is
// needed. both reports whether both are set; msg is "" when the token is
// as it should be.
func (c *Config) vaultTokenProblem(envToken bool) (msg string, both bool) {
	if c.Vault.Auth != nil || c.Vault.AppRole != nil {
		return "", false
	}
	file := c.file
	if file == "" {
		file = "config"
	}
	switch {
	case envToken && c.Vault.TokenFile != "":
		line := ""
		if c.tokenFileLine > 0 {
			line = fmt.Sprintf(" (line %d)", c.tokenFileLine)
		}
		return fmt.Sprintf("%s: vault.token_file: set, and so is VAULT_TOKEN: the server takes exactly one (unset VAULT_TOKEN, or remove vault.token_file)%s", file, line), true
	case !envToken && c.Vault.TokenFile == "":
		return fmt.Sprintf("%s: vault: no Vault token here: the server needs VAULT_TOKEN, vault.token_file or vault.auth (AppRole, Kubernetes) to start", file), false
	}
	return "", false
}

// vaultAddressSource names what set the Vault address: the environment
// variable or the config file's field and line.
func (c *Config) vaultAddressSource() string {
	if c.vaultAddressFrom != "" {
		return c.vaultAddressFrom
	}
	return "vault.address"
}

// AuthnConfig tunes identity-token verification.
type AuthnConfig struct {
	// VerifiedCacheSize bounds the tokens whose signature verified that are
	// remembered (by SHA-256), so presenting one again skips only the
	// signature check; every other check runs again. 0 = the default
	// (10,000), -1 = no cache.
	VerifiedCacheSize int `yaml:"verified_cache_size"`
}

// RefusalLimitConfig is broker.RefusalLimits; 0 is the default of each
// field, per_second -1 turns the limit off (per_identity's too),
// global_per_second -1 only the bucket of all sources, per_identity -1
// only the bound on authenticated callers' audited 429s.
type RefusalLimitConfig struct {
	PerSecond       float64  `yaml:"per_second"`
	Burst           int      `yaml:"burst"`
	MaxSources      int      `yaml:"max_sources"`
	SummaryEvery    duration `yaml:"summary_every"`
	GlobalPerSecond float64  `yaml:"global_per_second"`
	GlobalBurst     int      `yaml:"global_burst"`
	PerIdentity     int      `yaml:"per_identity"`
}

// limits returns the broker's limits, nil when turned off.
func (c RefusalLimitConfig) limits() *broker.RefusalLimits {
	if c.PerSecond < 0 {
		return nil
	}
	return &broker.RefusalLimits{PerSecond: c.PerSecond, Burst: c.Burst, MaxSources: c.MaxSources, SummaryEvery: time.Duration(c.SummaryEvery),
		GlobalPerSecond: c.GlobalPerSecond, GlobalBurst: c.GlobalBurst, PerIdentity: c.PerIdentity}
}

// minLimitPerSecond is the least per_second of a limit that draws no
// warning: one an hour, the longest Retry-After a 429 says (as a
// policy's rate).
const minLimitPerSecond = 1.0 / 3600

// configWarning is a warning of a config field: the server starts with
// it, and config check prints it.
type configWarning struct{ field, msg string }

// minStartupTimeout is the least startup_timeout (but 0: none) that
// draws no warning.
const minStartupTimeout = 30 * time.Second

// fieldWarnings are the warnings of c's fields: a refusal_limit or
// introspect_limit per_second under one an hour (a 429's Retry-After
// says at most an hour; a client that comes back then is refused again),
// as a policy's rate or proxy_rate draws; a startup_timeout under
// minStartupTimeout (a start-up that needs longer, a Vault login or an
// audit log read back slowly, is stopped at every start: a crash loop).
func (c *Config) fieldWarnings() []configWarning {
	var out []configWarning
	tiny := func(field string, v float64) {
		if v > 0 && v < minLimitPerSecond {
			out = append(out, configWarning{field, fmt.Sprintf("%g is less than one request an hour (1/3600): a 429's Retry-After says at most an hour, and a client that comes back then is refused again until its token is back", v)})
		}
	}
	tiny("refusal_limit.per_second", c.RefusalLimit.PerSecond)
	if c.RefusalLimit.PerSecond >= 0 { // -1 turns the global bucket off too
		tiny("refusal_limit.global_per_second", c.RefusalLimit.GlobalPerSecond)
	}
	tiny("introspect_limit.per_second", c.IntrospectLimit.PerSecond)
	if c.StartupTimeout != nil && *c.StartupTimeout > 0 && time.Duration(*c.StartupTimeout) < minStartupTimeout {
		out = append(out, configWarning{"startup_timeout", fmt.Sprintf("%s is less than %s: a start-up that needs longer (a slow Vault login, a long audit log read back to its last checkpoint) is stopped at every start and never serves (0: none; absent: %s)",
			time.Duration(*c.StartupTimeout), minStartupTimeout, DefaultStartupTimeout)})
	}
	return out
}

// logConfigWarnings logs c's warnings (fieldWarnings), each named by
// c's file and field, as config check prints them.
func logConfigWarnings(c *Config, log *slog.Logger) {
	for _, w := range c.fieldWarnings() {
		problem := w.field + ": " + w.msg
		if c.file != "" {
			problem = c.file + ": " + problem
		}
		log.Warn("config warning", slog.String("problem", problem))
	}
}

// IntrospectLimitConfig is broker.IntrospectLimits: 0 is the default of
// each field, per_second -1 turns the limit off.
type IntrospectLimitConfig struct {
	PerSecond  float64 `yaml:"per_second"`
	Burst      int     `yaml:"burst"`
	MaxCallers int     `yaml:"max_callers"`
}

// limits returns the broker's limits.
func (c IntrospectLimitConfig) limits() broker.IntrospectLimits {
	return broker.IntrospectLimits{PerSecond: c.PerSecond, Burst: c.Burst, MaxCallers: c.MaxCallers}
}

// VaultConfig says how to reach and log in to Vault.
type VaultConfig struct {
	Address   string   `yaml:"address"`    // VAULT_ADDR overrides
	TokenFile string   `yaml:"token_file"` // or VAULT_TOKEN
	CAFile    string   `yaml:"ca_file"`
	Timeout   duration `yaml:"timeout"` // per request, default 5s
	// Namespace is the Vault Enterprise / HCP Vault namespace of every
	// Vault call (X-Vault-Namespace); VAULT_NAMESPACE overrides; empty:
	// the root namespace.
	Namespace string `yaml:"namespace"`
	// TokenRole makes vault_token grants' tokens and the vault_dynamic
	// reader tokens through auth/token/create/<role> instead of
	// auth/token/create-orphan; the role must exist with orphan=true
	// (checked at start-up) and its allowed_policies bound what is handed
	// out.
	TokenRole string `yaml:"token_role"`
	// Auth logs the broker in with AppRole or Kubernetes instead of a
	// static token; exclusive with token_file and VAULT_TOKEN.
	Auth *VaultAuthConfig `yaml:"auth"`
	// AppRole is the SPEC's spelling of an AppRole login, the same as
	// auth: {method: approle, role_id_file, secret_id_file}; LoadConfig
	// turns it into Auth once the file validates.
	AppRole *AppRoleConfig `yaml:"approle"`
}

// AppRoleConfig is vault.approle (SPEC "Server configuration").
type AppRoleConfig struct {
	RoleIDFile   string `yaml:"role_id_file"`
	SecretIDFile string `yaml:"secret_id_file"`
}

// VaultAuthConfig is the broker's own Vault login. The token it gets is
// renewed by adapters/vault.Login and replaced by a new login when it cannot
// be renewed further or Vault refuses it (revoked).
type VaultAuthConfig struct {
	Method       string `yaml:"method"`         // approle or kubernetes
	RoleIDFile   string `yaml:"role_id_file"`   // approle
	SecretIDFile string `yaml:"secret_id_file"` // approle
	Role         string `yaml:"role"`           // kubernetes
	JWTFile      string `yaml:"jwt_file"`       // kubernetes; default the pod's service-account token
	Mount        string `yaml:"mount"`          // default approle / kubernetes
}

// StoreConfig selects the shared store.
type StoreConfig struct {
	RedisURL            string `yaml:"redis_url"` // KEYTRAIL_REDIS_URL overrides; empty = in-memory
	Prefix              string `yaml:"prefix"`
	AllowEvictingPolicy bool   `yaml:"allow_evicting_policy"`
	// MinReplicas is how many replicas must acknowledge a revocation, a
	// block, an unblock or a revoked mark before it succeeds (Redis WAIT);
	// 0 = do not wait.
	MinReplicas int `yaml:"min_replicas"`
	// CAFile verifies the server certificate of a rediss:// store, or of
	// the Addrs nodes with TLS; without TLS it is refused (it does not
	// turn TLS on).
	CAFile string `yaml:"ca_file"`
	// Addrs selects a Sentinel (with MasterName) or Cluster (several addrs,
	// no MasterName) deployment instead of redis_url; the password comes
	// from KEYTRAIL_REDIS_PASSWORD.
	Addrs      []string `yaml:"addrs"`
	MasterName string   `yaml:"master_name"`
	TLS        bool     `yaml:"tls"` // TLS to Sentinel/Cluster nodes
}

// Shared reports whether the store is Redis (a URL or addresses), which
// other instances may share; otherwise it is this process's memory.
func (c StoreConfig) Shared() bool { return c.RedisURL != "" || len(c.Addrs) > 0 }

// AuditConfig configures the audit log.
type AuditConfig struct {
	File              string `yaml:"file"`
	CheckpointKeyFile string `yaml:"checkpoint_key_file"`
	// CheckpointTransitKey signs checkpoints with this Vault transit key
	// (ed25519 or ecdsa-p256, on the "transit" mount) instead of a key file;
	// its public key is served in the broker's JWKS.
	CheckpointTransitKey string `yaml:"checkpoint_transit_key"`
	// Fsync per batch (group commit); default true. Turning it off trades
	// durability for speed and is for benchmarks only.
	Fsync *bool `yaml:"fsync"`
	// Journal makes each batch durable with one direct write into a
	// preallocated journal next to the file (.<name>.wal) instead of an fsync
	// of the file; default true. Falls back to fsync where the file system
	// has no direct I/O or no room for the journal. See docs/RELIABILITY.md.
	Journal *bool `yaml:"journal"`
	// JournalBytes is the journal's size (0 = 16 MiB, 16 KiB to 1 GiB): a
	// batch takes at least one 4 KiB block, and the file is fsynced each
	// time the journal fills, so a larger journal syncs the file less often.
	JournalBytes int64 `yaml:"journal_bytes"`
	// RotateBytes rotates the file past this size (0 = never).
	RotateBytes int64 `yaml:"rotate_bytes"`
	// RotateEvery rotates the file once it is this old (0 = never); either
	// limit rotates, and the chain continues across files.
	RotateEvery duration `yaml:"rotate_every"`
	// MaxBatch caps the events of one group commit (one write and one
	// fsync); 0 = the sink's default (256). 1 syncs every record on its
	// own, which `keytrail bench` uses as the durability baseline.
	MaxBatch int `yaml:"max_batch"`
	// DeferFor bounds how long an event nobody waits for (a proxied call's
	// use_result) waits to share the next event's write and fsync; 0 = the
	// sink's default (20ms). A crash can lose this much of them.
	DeferFor duration `yaml:"defer_for"`
}

// TLSConfig enables TLS on the listener.
type TLSConfig struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
}

// LogConfig configures structured logs on stderr.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug, info (default), warn, error
	Format string `yaml:"format"` // json (default) or text
}

type duration time.Duration

func (d *duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: %s is not a duration like 30s or 5m", n.Line, yamlcheck.Got(n))
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration like 30s or 5m", n.Line, n.Value)
	}
	*d = duration(v)
	return nil
}

// readConfigFile reads the config file as a policy file is read
// (policies.ReadFile): a regular file, symlinks followed, of at most
// policies.MaxFileSize bytes, so a mistaken path (a log, a binary,
// /dev/zero, a FIFO) is neither read whole nor waited on. A path that is
// not a regular file, or a file too large, is an error naming it; one the
// system cannot open or read, "config: " and the system's error.
func readConfigFile(path string) ([]byte, error) {
	data, err := policies.ReadFile(path)
	if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
		return nil, fmt.Errorf("config: %w", err)
	}
	return data, err
}

// LoadConfig reads, strictly decodes, applies environment overrides and
// defaults, and validates a config file. Every problem is reported, each
// named by file, field and line: first every value that does not fit its
// field (yamlcheck), then, once the file decodes, every validation rule.
func LoadConfig(path string, getenv func(string) string) (*Config, error) {
	c, _, err := loadConfigDoc(path, getenv)
	if err != nil {
		return nil, err
	}
	if a := c.Vault.AppRole; a != nil {
		c.Vault.Auth = &VaultAuthConfig{Method: vaultad.LoginAppRole, RoleIDFile: a.RoleIDFile, SecretIDFile: a.SecretIDFile}
		c.Vault.AppRole = nil
	}
	return c, nil
}

// loadConfigDoc is LoadConfig without the last step (vault.approle is left
// as written), and the YAML document the configuration was read from.
func loadConfigDoc(path string, getenv func(string) string) (*Config, *yaml.Node, error) {
	data, err := readConfigFile(path)
	if err != nil {
		return nil, nil, err
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, yamlError(path, data, err)
	}
	// One document: settings after a "---" would otherwise be ignored.
	for {
		var extra yaml.Node
		err := dec.Decode(&extra)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, yamlError(path, data, err)
		}
		if !emptyYAMLDocument(&extra) {
			return nil, nil, fmt.Errorf("%s: line %d: more than one YAML document; a config file holds one", path, extra.Line)
		}
	}
	// The decoder names Go types ("cannot unmarshal !!str into int64"),
	// stops at the first bad duration and truncates "max_batch: 1.5" to 1:
	// Check names every value that does not fit, by field and line.
	// Top-level keys starting with "x-" are extensions, ignored (as in
	// Compose files): a place for anchors (x-defaults: &d) that other
	// settings merge or alias. One merged into the top level ("<<: *d"
	// where d holds x- keys) is an extension too, as the decoder takes it
	// (TopLevelExtensions). x- keys are keys of the top level all the
	// same: one written twice is named as any other (once per repetition,
	// by the line of its first), and they count towards the top level's
	// yamlcheck.MaxKeys.
	var c Config
	// A list entry written without a value (store.addrs: [a, ~]) is
	// named too: the decoder would drop it silently (as in policies).
	ps := yamlcheck.Check(&doc, reflect.TypeOf(c), yamlcheck.NullEntries, yamlcheck.TopLevelExtensions)
	slices.SortStableFunc(ps, func(a, b yamlcheck.Problem) int { return a.Line - b.Line })
	if len(ps) > 0 {
		errs := make([]error, len(ps))
		for i, p := range ps {
			errs[i] = fmt.Errorf("%s: %w", path, p)
		}
		return nil, nil, errors.Join(errs...)
	}
	var withExt struct {
		Config     `yaml:",inline"`
		Extensions map[string]yaml.Node `yaml:",inline"` // the top level's unknown keys: only x-* pass Check
	}
	strict := yaml.NewDecoder(bytes.NewReader(data))
	strict.KnownFields(true)
	if err := strict.Decode(&withExt); err != nil && !errors.Is(err, io.EOF) {
		if p, ok := yamlcheck.ExcessiveAliasing(&doc, err); ok {
			return nil, nil, fmt.Errorf("%s: %w", path, p)
		}
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	for k := range withExt.Extensions {
		if !isExtensionKey(k) {
			return nil, nil, fmt.Errorf("%s: %s: unknown field", path, k)
		}
	}
	c = withExt.Config
	fromEnv := c.applyEnv(getenv)
	c.applyDefaults()
	if err := c.validateFile(path, &doc, fromEnv); err != nil {
		return nil, nil, err
	}
	c.file, c.tokenFileLine = path, policies.NodeLine(&doc, "vault.token_file")
	if v := fromEnv["vault.address"]; v != "" {
		c.vaultAddressFrom = v
	} else {
		c.vaultAddressFrom = "vault.address in " + path
		if line := policies.NodeLine(&doc, "vault.address"); line > 0 {
			c.vaultAddressFrom += fmt.Sprintf(", line %d", line)
		}
	}
	return &c, &doc, nil
}

// isExtensionKey reports whether a top-level config key is an extension
// (x-...), which LoadConfig ignores.
func isExtensionKey(k string) bool { return strings.HasPrefix(k, "x-") }

// yamlError is err, an error of parsing the YAML of the config file at
// path, named by file and line as policy files' are: the parser leaves the
// line out of a syntax error on the first line and of an unknown alias.
func yamlError(path string, data []byte, err error) error {
	return fmt.Errorf("%s: %s", path, strings.TrimPrefix(policies.ParseErrorLine(data, err).Error(), "yaml: "))
}

// emptyYAMLDocument reports whether n is a document with no content (a
// trailing "---" or "...").
func emptyYAMLDocument(n *yaml.Node) bool {
	for _, c := range n.Content {
		if c.Kind != yaml.ScalarNode || c.Tag != "!!null" || c.Value != "" {
			return false
		}
	}
	return n.Kind == yaml.DocumentNode
}

// applyEnv applies the environment overrides and returns the variable
// that set each field it set, by field path.
func (c *Config) applyEnv(getenv func(string) string) map[string]string {
	from := map[string]string{}
	for _, o := range []struct {
		field, env string
		dst        *string
	}{
		{"listen", "KEYTRAIL_LISTEN", &c.Listen},
		{"vault.address", "VAULT_ADDR", &c.Vault.Address},
		{"vault.namespace", "VAULT_NAMESPACE", &c.Vault.Namespace},
		{"store.redis_url", "KEYTRAIL_REDIS_URL", &c.Store.RedisURL},
	} {
		if v := getenv(o.env); v != "" {
			*o.dst = v
			from[o.field] = o.env
		}
	}
	return from
}

// DefaultStartupTimeout is startup_timeout when the configuration does
// not set it: the 150 x 2 s of the Kubernetes example's startup probe.
const DefaultStartupTimeout = 5 * time.Minute

func (c *Config) applyDefaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:7700"
	}
	if c.Vault.Timeout == 0 {
		c.Vault.Timeout = duration(5 * time.Second)
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = duration(20 * time.Second)
	}
	if c.StartupTimeout == nil {
		d := duration(DefaultStartupTimeout)
		c.StartupTimeout = &d
	}
	if c.Audit.Fsync == nil {
		t := true
		c.Audit.Fsync = &t
	}
	if c.Audit.Journal == nil {
		t := true
		c.Audit.Journal = &t
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "json"
	}
	// One spelling of the public URL: it is the iss of broker JWTs and
	// introspection answers and the discovery issuer, which verifiers
	// compare byte for byte.
	c.PublicURL = strings.TrimRight(c.PublicURL, "/")
}

// validate checks every rule of a configuration built in code (dev, tests);
// each problem is named by file and field.
func (c *Config) validate(file string) error { return c.validateFile(file, nil, nil) }

// validateFile is validate for a configuration read from doc: a problem
// also names the line of its field (merge keys followed, as the decoder
// does; for a field not written, the line of the last one found on its
// path), or, for a field the environment set, the variable (fromEnv, by
// field path).
func (c *Config) validateFile(file string, doc *yaml.Node, fromEnv map[string]string) error {
	var errs []error
	bad := func(field, format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		if v := fromEnv[field]; v != "" {
			msg += " (from " + v + ")"
		} else if line := policies.NodeLine(doc, field); line > 0 {
			msg += fmt.Sprintf(" (line %d)", line)
		}
		errs = append(errs, fmt.Errorf("%s: %s: %s", file, field, msg))
	}
	host, _, err := net.SplitHostPort(c.Listen)
	if err != nil {
		bad("listen", "must be host:port (%v)", err)
	} else if c.TLS == nil && !c.AllowPlainHTTP && !policies.IsLoopbackHost(host) {
		bad("listen", "plain HTTP is allowed only on loopback addresses; configure tls or set allow_plain_http: true")
	}
	if c.PprofListen != "" {
		if h, _, err := net.SplitHostPort(c.PprofListen); err != nil {
			bad("pprof_listen", "must be host:port (%v)", err)
		} else if !policies.IsLoopbackHost(h) {
			bad("pprof_listen", "must be a loopback address (profiles are served without authentication)")
		}
	}
	if c.PublicURL == "" {
		bad("public_url", "is required (the iss of broker JWTs and the discovery base)")
	} else if u, err := url.Parse(c.PublicURL); err != nil || !u.IsAbs() || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		bad("public_url", "must be an absolute http(s) URL")
	} else if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		bad("public_url", "must not have a query, fragment or user info")
	}
	if c.Policy == "" {
		bad("policy", "is required (a policy file or directory)")
	} else if _, err := os.Stat(c.Policy); err != nil {
		bad("policy", "%v", err)
	}
	if c.Vault.Address == "" {
		bad("vault.address", "is required (or set VAULT_ADDR)")
	} else if u, err := url.Parse(c.Vault.Address); err != nil || !u.IsAbs() || u.Host == "" {
		bad("vault.address", "must be an absolute URL")
	} else if u.Scheme != "https" && u.Scheme != "http" {
		// The Vault client would fail every call with "unsupported
		// protocol scheme" once the server runs.
		bad("vault.address", "must be an http or https URL, not %s://", u.Scheme)
	}
	if c.Vault.CAFile != "" {
		if _, err := os.Stat(c.Vault.CAFile); err != nil {
			bad("vault.ca_file", "%v", err)
		}
	}
	if c.Vault.TokenFile != "" {
		if _, err := os.Stat(c.Vault.TokenFile); err != nil {
			bad("vault.token_file", "%v", err)
		}
	}
	if c.Vault.Timeout < 0 {
		bad("vault.timeout", "must not be negative (0: the default, 5s)")
	}
	if err := vaultad.CheckNamespace(c.Vault.Namespace); err != nil {
		bad("vault.namespace", "%v", err)
	}
	if r := c.Vault.TokenRole; r != "" && !vaultad.PlainRoleName(r) {
		bad("vault.token_role", "must be a token role name (letters, digits, '_', and '.' or '-' inside)")
	}
	if a := c.Vault.AppRole; a != nil {
		switch {
		case c.Vault.Auth != nil:
			bad("vault.approle", "cannot be combined with vault.auth (approle is the short form of auth: {method: approle})")
		case c.Vault.TokenFile != "":
			bad("vault.approle", "cannot be combined with vault.token_file")
		}
		if a.RoleIDFile == "" {
			bad("vault.approle.role_id_file", "is required")
		}
		if a.SecretIDFile == "" {
			bad("vault.approle.secret_id_file", "is required")
		}
	}
	if a := c.Vault.Auth; a != nil {
		if c.Vault.TokenFile != "" {
			bad("vault.auth", "cannot be combined with vault.token_file")
		}
		switch a.Method {
		case "approle":
			if a.RoleIDFile == "" {
				bad("vault.auth.role_id_file", "is required for approle")
			}
			if a.SecretIDFile == "" {
				bad("vault.auth.secret_id_file", "is required for approle")
			}
		case "kubernetes":
			if a.Role == "" {
				bad("vault.auth.role", "is required for kubernetes")
			} else if !vaultad.PlainRoleName(a.Role) {
				bad("vault.auth.role", "must be a role name (letters, digits, '_', and '.' or '-' inside)")
			}
		default:
			bad("vault.auth.method", "must be approle or kubernetes")
		}
	}
	storeScheme := ""
	if c.Store.RedisURL != "" {
		// What the store refuses at start-up (redisstore.New: unix://, a
		// URL go-redis cannot read), said here with every other problem.
		if msg := redisURLProblem(c.Store.RedisURL); msg != "" {
			bad("store.redis_url", "%s", msg)
		} else if u, err := url.Parse(c.Store.RedisURL); err == nil {
			storeScheme = u.Scheme
			// SPEC: secrets are referenced by file or environment, never
			// inline. A file's URL names no password; the environment's
			// (KEYTRAIL_REDIS_URL, a Secret in Kubernetes) may.
			if pw, ok := u.User.Password(); ok && pw != "" && doc != nil && fromEnv["store.redis_url"] == "" {
				bad("store.redis_url", "holds a password inline; secrets are never written in the configuration: give the URL in KEYTRAIL_REDIS_URL instead (or store.addrs with KEYTRAIL_REDIS_PASSWORD)")
			}
		}
	}
	if c.Store.RedisURL != "" && len(c.Store.Addrs) > 0 {
		bad("store.addrs", "cannot be combined with store.redis_url")
	}
	switch {
	case c.Store.MinReplicas < 0:
		bad("store.min_replicas", "must be 0 or more")
	case c.Store.MinReplicas > 0 && !c.Store.Shared():
		bad("store.min_replicas", "needs a Redis store (store.redis_url or store.addrs)")
	}
	if c.Store.MasterName != "" && len(c.Store.Addrs) == 0 {
		bad("store.master_name", "needs store.addrs (the Sentinel addresses)")
	}
	if c.Store.CAFile != "" {
		if _, err := os.Stat(c.Store.CAFile); err != nil {
			bad("store.ca_file", "%v", err)
		}
		// A CA does not turn TLS on: the store refuses it on a plain
		// connection rather than guess (redisstore.New).
		switch {
		case len(c.Store.Addrs) > 0 && !c.Store.TLS:
			bad("store.ca_file", "needs store.tls: true (store.addrs are reached without TLS unless it is set)")
		case storeScheme == "redis":
			bad("store.ca_file", "needs a rediss:// store.redis_url (a redis:// store is reached without TLS)")
		}
	}
	if c.Audit.File == "" {
		bad("audit.file", "is required (the JSON Lines audit log)")
	}
	if c.Audit.CheckpointKeyFile != "" {
		if _, err := os.Stat(c.Audit.CheckpointKeyFile); err != nil {
			bad("audit.checkpoint_key_file", "%v", err)
		}
	}
	if k := c.Audit.CheckpointTransitKey; k != "" {
		if c.Audit.CheckpointKeyFile != "" {
			bad("audit.checkpoint_transit_key", "cannot be combined with audit.checkpoint_key_file")
		}
		if strings.ContainsAny(k, "/: \t?#%\\") || k == "." || k == ".." {
			bad("audit.checkpoint_transit_key", "must be a transit key name")
		}
	}
	if c.Audit.RotateEvery < 0 {
		bad("audit.rotate_every", "must not be negative (0: never)")
	}
	if c.Audit.RotateBytes < 0 {
		bad("audit.rotate_bytes", "must not be negative")
	}
	if c.Audit.JournalBytes != 0 && (c.Audit.JournalBytes < auditfile.MinJournalBytes || c.Audit.JournalBytes > auditfile.MaxJournalBytes) {
		bad("audit.journal_bytes", "must be 0 (the default, 16 MiB) or between %d and %d", auditfile.MinJournalBytes, auditfile.MaxJournalBytes)
	}
	if c.Audit.MaxBatch < 0 {
		bad("audit.max_batch", "must not be negative")
	}
	if c.Audit.DeferFor < 0 || time.Duration(c.Audit.DeferFor) > time.Second {
		bad("audit.defer_for", "must be between 0 (the default, 20ms) and 1s")
	}
	if c.StartupTimeout != nil && *c.StartupTimeout < 0 {
		bad("startup_timeout", "must not be negative (0: none; absent: the default, %s)", DefaultStartupTimeout)
	}
	if c.ShutdownTimeout < 0 {
		bad("shutdown_timeout", "must not be negative (0: the default, 20s)")
	}
	if c.ShutdownDrain < 0 {
		bad("shutdown_drain", "must not be negative (0: the default, no drain)")
	}
	if d := c.Deployment; d != "" && !validDeployment(d) {
		bad("deployment", "must be 1 to 64 letters, digits, '.', '_' or '-'")
	}
	if c.Authn.VerifiedCacheSize < -1 {
		bad("authn.verified_cache_size", "must be -1 (no cache), 0 (the default) or more")
	}
	if rl := c.RefusalLimit; math.IsNaN(rl.PerSecond) || math.IsInf(rl.PerSecond, 0) || rl.PerSecond < 0 && rl.PerSecond != -1 {
		// .nan and .inf decode, and would turn the limit off unsaid.
		bad("refusal_limit.per_second", "must be -1 (off), 0 (the default, 1) or a finite positive number")
	}
	if c.RefusalLimit.Burst < 0 {
		bad("refusal_limit.burst", "must not be negative (0: the default, 20)")
	}
	if g := c.RefusalLimit.GlobalPerSecond; math.IsNaN(g) || math.IsInf(g, 0) || g < 0 && g != -1 {
		bad("refusal_limit.global_per_second", "must be -1 (no global bucket), 0 (the default, 200) or a finite positive number")
	}
	if c.RefusalLimit.GlobalBurst < 0 {
		bad("refusal_limit.global_burst", "must not be negative (0: the default, 1000)")
	}
	if c.RefusalLimit.PerIdentity < -1 {
		bad("refusal_limit.per_identity", "must be -1 (every 429 audited), 0 (the default, 20) or more")
	}
	if c.RefusalLimit.MaxSources < 0 {
		bad("refusal_limit.max_sources", "must not be negative (0: the default, 10000)")
	}
	if d := time.Duration(c.RefusalLimit.SummaryEvery); d < 0 || (d > 0 && d < time.Second) {
		// The sweep runs every summary_every under the guard's lock over
		// every tracked source: 1ns would keep it sweeping.
		bad("refusal_limit.summary_every", "must be 1s or more (0: the default, 1m)")
	}
	if il := c.IntrospectLimit; math.IsNaN(il.PerSecond) || math.IsInf(il.PerSecond, 0) || il.PerSecond < 0 && il.PerSecond != -1 {
		bad("introspect_limit.per_second", "must be -1 (off), 0 (the default, 100) or a finite positive number")
	}
	if c.IntrospectLimit.Burst < 0 {
		bad("introspect_limit.burst", "must not be negative (0: the default, 1000)")
	}
	if c.IntrospectLimit.MaxCallers < 0 {
		bad("introspect_limit.max_callers", "must not be negative (0: the default, 10000)")
	}
	for i, p := range c.TrustedProxies {
		switch pr, err := httpapi.ParseTrustedProxy(p); {
		case err != nil:
			bad(fmt.Sprintf("trusted_proxies[%d]", i), "%v", err)
		case pr.Bits() == 0:
			// Every address a proxy: X-Forwarded-For believed from any
			// peer, what trusted_proxies is there to prevent.
			bad(fmt.Sprintf("trusted_proxies[%d]", i), "%q trusts every peer (any caller could choose its source address): list the front proxies' addresses or ranges", p)
		}
	}
	switch {
	case c.TrustProxyHeaders && len(c.TrustedProxies) == 0:
		// As Vault, which reads X-Forwarded-For only from
		// x_forwarded_for_authorized_addrs: believed from any peer, a
		// caller reaching the broker directly would choose the source
		// address its audit events name and its refusal budget.
		bad("trust_proxy_headers", "needs trusted_proxies, the front proxies' addresses or CIDRs (e.g. [10.0.0.0/8]): X-Forwarded-For is read only from them")
	case !c.TrustProxyHeaders && len(c.TrustedProxies) > 0:
		bad("trusted_proxies", "has no effect without trust_proxy_headers: true")
	}
	if c.TLS != nil {
		// Checked here, with every other problem: the server reads them
		// only once it is wired (Vault login, audit log opened) and about
		// to listen.
		for _, f := range []struct{ field, path string }{
			{"tls.cert_file", c.TLS.CertFile}, {"tls.key_file", c.TLS.KeyFile}, {"tls.client_ca_file", c.TLS.ClientCAFile},
		} {
			switch {
			case f.path == "" && f.field != "tls.client_ca_file":
				bad(f.field, "is required when tls is set")
			case f.path != "":
				if _, err := os.Stat(f.path); err != nil {
					bad(f.field, "%v", err)
				}
			}
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "must be debug, info, warn or error")
	}
	switch c.Log.Format {
	case "json", "text":
	default:
		bad("log.format", "must be json or text")
	}
	return errors.Join(errs...)
}

// trustedProxies returns the proxies whose X-Forwarded-For the server
// reads (httpapi.Options.TrustedProxies): none unless trust_proxy_headers
// is set. The entries were validated.
func (c *Config) trustedProxies() []netip.Prefix {
	if !c.TrustProxyHeaders {
		return nil
	}
	out := make([]netip.Prefix, 0, len(c.TrustedProxies))
	for _, s := range c.TrustedProxies {
		if p, err := httpapi.ParseTrustedProxy(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// validDeployment reports whether d is a deployment name: 1 to 64
// letters, digits, '.', '_' or '-'.
func validDeployment(d string) bool {
	if len(d) == 0 || len(d) > 64 {
		return false
	}
	for _, r := range d {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// deploymentID is the deployment the broker tags its Vault tokens with
// (Config.Deployment): the configured one, or by default
//   - with the in-memory store (one instance, its own deployment), chain:
//     the id of its audit chain, which a restart with the same audit file
//     keeps (the in-memory store's own id would not: its data, and the id
//     with it, is gone at every restart);
//   - with Redis, the id the store holds (broker.Store.DeploymentID,
//     created by the first instance that asks): the same for every
//     instance of the deployment whatever name or address it reaches
//     Redis by, different for another Redis or prefix.
func deploymentID(ctx context.Context, c *Config, st broker.Store, chain string) (string, error) {
	if c.Deployment != "" {
		return c.Deployment, nil
	}
	if !c.Store.Shared() {
		return chain, nil
	}
	id, err := st.DeploymentID(ctx)
	if err != nil {
		return "", fmt.Errorf("store: deployment id: %w", err)
	}
	return id, nil
}

// redisURLProblem is what redisstore.New says of a store.redis_url it
// refuses, or "". Like it, it quotes no part of the user info: url.Parse
// errors repeat the URL, and an unescaped '/', '?' or '#' in the password
// moves it into the path, which go-redis's errors quote.
func redisURLProblem(s string) string {
	const want = "want redis://[user:password@]host:port/db or rediss://..."
	u, err := url.Parse(s)
	if err != nil {
		return "cannot be parsed (" + want + "; escape special characters in the user name and password)"
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return "must be a redis:// or rediss:// URL"
	}
	if u.User == nil && strings.Contains(s, "@") {
		return "'@' after the host: escape '/', '?', '#' and '@' in the user name and password"
	}
	if _, err := redis.ParseURL(s); err != nil {
		msg := err.Error()
		if pw, ok := u.User.Password(); ok && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "REDACTED")
		}
		return msg + " (" + want + ")"
	}
	return ""
}
