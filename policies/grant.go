package policies

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// TTLDuration is the grant's maximum credential lifetime.
func (g *Grant) TTLDuration() time.Duration { return time.Duration(g.TTL) }

// AllowsMethod reports whether the proxy grant allows HTTP method m (exact,
// uppercase). A grant with no methods allows GET only, the default.
func (p *ProxyGrant) AllowsMethod(m string) bool {
	if len(p.Methods) == 0 {
		return m == "GET"
	}
	for _, x := range p.Methods {
		if x == m {
			return true
		}
	}
	return false
}

// AllowsPath reports whether the proxy grant allows the URL path, which the
// caller has already decoded and cleaned. A pattern matches exactly, or, when
// it ends in "/*", matches every path strictly under the prefix ("/v1/x/*"
// matches "/v1/x/a" and "/v1/x/a/b" but not "/v1/x"). Deny by default: a
// path that is not absolute or that has "." or ".." segments or "//" never
// matches.
func (p *ProxyGrant) AllowsPath(path string) bool {
	if !strings.HasPrefix(path, "/") || !cleanPath(path) {
		return false
	}
	for _, pat := range p.Paths {
		if prefix, ok := strings.CutSuffix(pat, "*"); ok && strings.HasSuffix(prefix, "/") {
			if len(path) > len(prefix) && strings.HasPrefix(path, prefix) {
				return true
			}
			continue
		}
		if path == pat {
			return true
		}
	}
	return false
}

// Describe says, in human-readable lines, what the grant mints. It never
// includes secret values (only where they come from).
func (g *Grant) Describe() []string {
	lines := []string{fmt.Sprintf("kind %s, ttl at most %s", g.Kind, g.TTLDuration())}
	switch {
	case g.Kind == KindVaultToken && g.VaultToken != nil:
		uses := "unlimited uses"
		if g.VaultToken.NumUses > 0 {
			uses = strconv.Itoa(g.VaultToken.NumUses) + " uses"
		}
		lines = append(lines, fmt.Sprintf("mints an orphan Vault token with policies [%s], %s", strings.Join(g.VaultToken.Policies, ", "), uses))
	case g.Kind == KindJWT && g.JWT != nil:
		lines = append(lines, fmt.Sprintf("mints a JWT for audience %q signed by Vault transit key %q", g.JWT.Audience, g.JWT.TransitKey))
	case g.Kind == KindVaultDynamic && g.VaultDynamic != nil:
		lines = append(lines, fmt.Sprintf("reads dynamic credentials from Vault path %q", g.VaultDynamic.Path))
	case g.Kind == KindPKI && g.PKI != nil:
		l := fmt.Sprintf("issues a certificate from Vault PKI path %q", g.PKI.Path)
		if g.PKI.TrustDomain != "" {
			l += fmt.Sprintf(" with URI SAN spiffe://%s/<workload>", g.PKI.TrustDomain)
		}
		lines = append(lines, l)
	case g.Kind == KindProxy && g.Proxy != nil:
		px := g.Proxy
		methods := px.Methods
		if len(methods) == 0 {
			methods = []string{"GET"}
		}
		lines = append(lines,
			fmt.Sprintf("mints a proxy credential for %s, methods [%s], paths [%s]", px.Upstream, strings.Join(methods, ", "), strings.Join(px.Paths, ", ")))
		where := fmt.Sprintf("query parameter %q", px.Inject.Query)
		if px.Inject.Header != "" {
			where = fmt.Sprintf("header %q as %q", px.Inject.Header, px.Inject.Format)
		}
		lines = append(lines, fmt.Sprintf("the proxy injects field %q of Vault KV %q in %s", px.Secret.Field, px.Secret.VaultKV, where))
	}
	return lines
}
