package proxy

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// TokenPrefix starts every proxy credential.
const TokenPrefix = "ktp_"

// tokenBytes is the entropy of a proxy credential (256 bits).
const tokenBytes = 32

// MinterOptions configure NewMinter.
type MinterOptions struct {
	// PublicURL is the broker's public base URL (config public_url); the
	// credential's proxy_url field is PublicURL + "/v1/proxy/<grant>/".
	PublicURL string
}

// Minter mints proxy credentials (grant kind "proxy"). It implements
// broker.Minter and broker.Revoker.
type Minter struct {
	base string
}

var (
	_ broker.InProcessMinter = (*Minter)(nil)
	_ broker.Revoker         = (*Minter)(nil)
)

// NewMinter validates o and returns a Minter.
func NewMinter(o MinterOptions) (*Minter, error) {
	u, err := url.Parse(o.PublicURL)
	if o.PublicURL == "" || err != nil || !u.IsAbs() || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") || u.RawQuery != "" || u.Fragment != "" {
		return nil, errors.New("proxy minter: PublicURL must be an absolute http(s) URL without query")
	}
	return &Minter{base: strings.TrimRight(o.PublicURL, "/")}, nil
}

// Mint returns "ktp_" + base64url(32 random bytes), expiring at
// req.Now+req.TTL, with the fields grant and proxy_url.
func (m *Minter) Mint(ctx context.Context, req broker.MintRequest) (*broker.Credential, error) {
	if req.Grant.Kind != broker.KindProxy || req.Grant.Proxy == nil {
		return nil, broker.Unavailable("kind_not_configured", 30*time.Second,
			fmt.Errorf("proxy minter: grant %q is of kind %q", req.Grant.Name, req.Grant.Kind))
	}
	if req.TTL <= 0 {
		return nil, broker.Unavailable("bad_ttl", 30*time.Second, fmt.Errorf("proxy minter: grant %q: non-positive ttl", req.Grant.Name))
	}
	if err := ctx.Err(); err != nil {
		return nil, broker.Unavailable("canceled", time.Second, err)
	}
	var b [tokenBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, broker.Unavailable("no_randomness", time.Second, err)
	}
	return &broker.Credential{
		AccessToken: TokenPrefix + base64.RawURLEncoding.EncodeToString(b[:]),
		Fields: map[string]any{
			"grant":     req.Grant.Name,
			"proxy_url": m.base + "/v1/proxy/" + url.PathEscape(req.Grant.Name) + "/",
		},
		Refs: broker.CredentialRefs{ExpiresAt: req.Now.Add(req.TTL)},
	}, nil
}

// MintsInProcess says Mint makes no backend call and never waits: the
// exchange gives it no deadline context of its own (broker.InProcessMinter).
func (m *Minter) MintsInProcess() bool { return true }

// Revoke has nothing to do at a backend: a proxy credential is only valid
// while its issuance is unrevoked in the store, which the proxy checks on
// every request. It always succeeds.
func (m *Minter) Revoke(ctx context.Context, is *broker.Issuance) error { return nil }
