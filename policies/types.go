package policies

import (
	"fmt"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/keytrail/keytrail/policies/yamlcheck"
)

// File is the YAML shape of one policy file (SPEC "Policy files"). Fields are
// decoded strictly: an unknown field is an error.
type File struct {
	Version    int         `yaml:"version"`
	Issuers    []Issuer    `yaml:"issuers"`
	Workloads  []Workload  `yaml:"workloads"`
	Grants     []Grant     `yaml:"grants"`
	Admins     []Admin     `yaml:"admins"`
	Exceptions []Exception `yaml:"exceptions"`
}

// Issuer is a trusted identity-token issuer.
type Issuer struct {
	Name             string   `yaml:"name"`
	Issuer           string   `yaml:"issuer"`    // exact match on iss
	JWKSURL          string   `yaml:"jwks_url"`  // or Discovery
	Discovery        bool     `yaml:"discovery"` // fetch <issuer>/.well-known/openid-configuration
	CAFile           string   `yaml:"ca_file"`   // CA bundle for the JWKS/discovery endpoint
	Audiences        []string `yaml:"audiences"` // aud must contain one
	Algorithms       []string `yaml:"algorithms"`
	MaxTokenLifetime Duration `yaml:"max_token_lifetime"`
	// SessionClaim names the claim whose value identifies one running
	// instance: a dotted path, or several joined by "+" (GitHub Actions:
	// run_id+run_attempt), all of which must be present.
	SessionClaim string `yaml:"session_claim"`
	// TokenTypes, when set, lists the typ header values its tokens may
	// carry (RFC 8725 §3.11): media types compared without regard to case
	// and with "application/" taken as written when absent (RFC 7515
	// §4.1.9), so "JWT", "jwt" and "application/jwt" are one value; ""
	// (NoTokenType) admits tokens without a typ header. Absent: any typ,
	// or none, is accepted.
	TokenTypes []string `yaml:"token_types"`
	// Source is where the issuer was declared ("file: issuers[i]", the
	// file quoted when not printable, as in a Problem), set by Load and
	// Parse, for messages about it from other packages.
	Source string `yaml:"-"`
}

// Workload is a named identity defined by claims of one issuer.
type Workload struct {
	Name   string   `yaml:"name"`
	Owner  string   `yaml:"owner"`
	Match  Match    `yaml:"match"`
	Grants []string `yaml:"grants"`
	Rate   *Rate    `yaml:"rate"`
	// ProxyRate, when set, is the bucket of the workload's proxied
	// requests, apart from Rate's; absent, they share Rate's bucket with
	// its token exchanges (docs/SPEC-ADDITIONS.md).
	ProxyRate *Rate `yaml:"proxy_rate"`
}

// Match selects tokens of one issuer.
type Match struct {
	Issuer         string            `yaml:"issuer"`
	Subject        string            `yaml:"subject"`
	SubjectPattern string            `yaml:"subject_pattern"` // anchored regex
	Claims         map[string]string `yaml:"claims"`          // dotted path -> exact value
	ClaimPatterns  map[string]string `yaml:"claim_patterns"`  // dotted path -> anchored regex
}

// Rate is a per-workload token bucket.
type Rate struct {
	PerSecond float64 `yaml:"per_second"`
	Burst     int     `yaml:"burst"`
}

// Grant is a named kind of credential. Exactly one of the kind blocks is set,
// the one named by Kind.
type Grant struct {
	Name         string             `yaml:"name"`
	Kind         string             `yaml:"kind"`
	TTL          Duration           `yaml:"ttl"`
	VaultToken   *VaultTokenGrant   `yaml:"vault_token"`
	JWT          *JWTGrant          `yaml:"jwt"`
	VaultDynamic *VaultDynamicGrant `yaml:"vault_dynamic"`
	Proxy        *ProxyGrant        `yaml:"proxy"`
	PKI          *PKIGrant          `yaml:"pki"`
}

// VaultTokenGrant mints an orphan Vault token.
type VaultTokenGrant struct {
	Policies []string `yaml:"policies"`
	NumUses  int      `yaml:"num_uses"`
}

// JWTGrant mints a JWT signed by a Vault transit key.
type JWTGrant struct {
	Audience   string `yaml:"audience"`
	TransitKey string `yaml:"transit_key"`
}

// VaultDynamicGrant reads a Vault dynamic-secrets path (e.g. database/creds/x).
type VaultDynamicGrant struct {
	Path string `yaml:"path"`
}

// PKIGrant issues a certificate from a Vault PKI role.
type PKIGrant struct {
	Path        string `yaml:"path"`         // e.g. pki/issue/workloads
	TrustDomain string `yaml:"trust_domain"` // URI SAN spiffe://<trust_domain>/<workload>
}

// ProxyGrant is a credential-injecting proxy to one upstream API.
type ProxyGrant struct {
	Upstream     string      `yaml:"upstream"`
	AllowPrivate bool        `yaml:"allow_private"`
	CAFile       string      `yaml:"ca_file"`
	Secret       ProxySecret `yaml:"secret"`
	Inject       ProxyInject `yaml:"inject"`
	Methods      []string    `yaml:"methods"`
	Paths        []string    `yaml:"paths"`
}

// ProxySecret names the upstream secret in Vault KV v2.
type ProxySecret struct {
	VaultKV string `yaml:"vault_kv"`
	Field   string `yaml:"field"`
}

// ProxyInject says where the secret goes: a header with a format, or a query
// parameter.
type ProxyInject struct {
	Header string `yaml:"header"`
	Format string `yaml:"format"`
	Query  string `yaml:"query"`
}

// Admin is an identity allowed admin roles.
type Admin struct {
	Name  string   `yaml:"name"`
	Match Match    `yaml:"match"`
	Roles []string `yaml:"roles"`
}

// Exception documents a shared credential that is knowingly kept.
type Exception struct {
	Name    string `yaml:"name"`
	Owner   string `yaml:"owner"`
	Reason  string `yaml:"reason"`
	Expires Date   `yaml:"expires"`
}

// Duration is a time.Duration written as a Go duration string ("15m", "24h").
type Duration time.Duration

// Date is a calendar day written as YYYY-MM-DD.
type Date struct{ time.Time }

// UnmarshalYAML decodes a Go duration string ("15m", "24h"). A bare number
// without a unit is rejected (except 0), so "15" cannot silently mean 15ns.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: duration must be a string like \"15m\", not %s", n.Line, yamlcheck.Got(n))}}
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: invalid duration %s: want a Go duration like \"15m\" or \"24h\"", n.Line, quoted(n.Value))}}
	}
	*d = Duration(v)
	return nil
}

// String formats the duration like time.Duration does.
func (d Duration) String() string { return time.Duration(d).String() }

// dateLayout is the YAML form of a Date.
const dateLayout = "2006-01-02"

// UnmarshalYAML decodes a YYYY-MM-DD calendar day (UTC midnight).
func (d *Date) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: date must be YYYY-MM-DD, not %s", n.Line, yamlcheck.Got(n))}}
	}
	t, err := time.Parse(dateLayout, n.Value)
	if err != nil {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: invalid date %s: want YYYY-MM-DD", n.Line, quoted(n.Value))}}
	}
	d.Time = t
	return nil
}

// String formats the date as YYYY-MM-DD ("" when unset).
func (d Date) String() string {
	if d.IsZero() {
		return ""
	}
	return d.Format(dateLayout)
}
