package main

// `keytrail audit verify --jwks`: checkpoint keys from a JWKS (the broker's
// /.well-known/jwks.json, which serves the Vault transit public keys).

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/MicahParks/jwkset"

	vaultad "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/policies"
)

const (
	// maxJWKSBytes caps a JWKS read from a file or a URL.
	maxJWKSBytes = 1 << 20
	// maxJWKSKeys caps the keys of one JWKS.
	maxJWKSKeys = 1000
	jwksTimeout = 10 * time.Second
)

// jwksVerifyFunc loads the JWKS at each src (an http(s) URL or a file) and
// returns a VerifyFunc for checkpoints signed by a Vault transit key listed
// in any of them, by kid.
func jwksVerifyFunc(ctx context.Context, srcs ...string) (audit.VerifyFunc, error) {
	var keys []broker.PublicKey
	for _, src := range srcs {
		data, err := readJWKS(ctx, src)
		if err != nil {
			return nil, err
		}
		ks, err := parseJWKS(data)
		if err != nil {
			return nil, fmt.Errorf("jwks %s: %w", jwksShown(src), err)
		}
		keys = append(keys, ks...)
	}
	f, err := vaultad.CheckpointVerifyFunc(keys)
	if err != nil {
		shown := make([]string, len(srcs))
		for i, src := range srcs {
			shown[i] = jwksShown(src)
		}
		return nil, fmt.Errorf("jwks %s: %w", strings.Join(shown, ", "), err)
	}
	return f, nil
}

// jwksIsURL reports whether a --jwks source is a URL (else a file).
func jwksIsURL(src string) bool {
	return strings.HasPrefix(src, "https://") || strings.HasPrefix(src, "http://")
}

// jwksShown is a --jwks source as errors show it: a file as given, a URL
// without its user info (basic auth for a front proxy: the name may be a
// token as much as the password), query or fragment. Its path is kept (it
// tells the sources of one host apart), unlike the Vault address's
// (vaultad.DisplayAddress); one that does not parse is shown as
// "(unparsable address)", since its text may hold any of them.
func jwksShown(src string) string {
	if !jwksIsURL(src) {
		return src
	}
	u, err := url.Parse(src)
	if err != nil {
		return "(unparsable address)"
	}
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}).String()
}

// readJWKS reads at most maxJWKSBytes from a URL (https, or http to a
// loopback address; it must answer 200), a regular file or a pipe (a
// named one, bash's <(cmd), or "-" for standard input fed by one; at most
// jwksPipeTimeout waited for).
func readJWKS(ctx context.Context, src string) ([]byte, error) {
	var r io.Reader
	shown := jwksShown(src)
	if jwksIsURL(src) {
		ctx, cancel := context.WithTimeout(ctx, jwksTimeout)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
		if err != nil {
			// url.Parse's error quotes the URL whole, user info too.
			return nil, fmt.Errorf("jwks %s: not a URL", shown)
		}
		// Whoever can change the keys in transit can make a rewritten
		// log verify: plain HTTP only to this host.
		if req.URL.Scheme != "https" && !policies.IsLoopbackHost(req.URL.Hostname()) {
			return nil, fmt.Errorf("jwks %s: must be https (plain http only for loopback addresses)", shown)
		}
		req.Header.Set("Accept", "application/json")
		client := &http.Client{Timeout: jwksTimeout, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // a redirect is answered as an HTTP 3xx error
		}}
		resp, err := client.Do(req)
		if err != nil {
			// A *url.Error names the URL with the user name (only the
			// password masked): shown is named instead.
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			return nil, fmt.Errorf("jwks %s: %w", shown, vaultad.HideUserinfo(err, src))
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("jwks %s: HTTP %d", shown, resp.StatusCode)
		}
		r = resp.Body
	} else {
		path := src
		if src == "-" {
			path = "/dev/stdin"
		}
		// A pipe (--jwks <(curl ...), or - fed by one) is read to its
		// end, within bounds; anything else but a regular file is
		// refused, not blocked on (a FIFO's open) nor read (/dev/zero).
		data, ok, err := openJWKSPipe(ctx, path)
		if ok {
			if err != nil {
				return nil, err // names the file
			}
			r = bytes.NewReader(data)
		} else {
			f, err := policies.OpenRegular(path)
			if err != nil {
				return nil, err // names the file
			}
			defer f.Close()
			r = f
		}
	}
	data, err := io.ReadAll(io.LimitReader(r, maxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("jwks %s: %w", shown, err)
	}
	if len(data) > maxJWKSBytes {
		return nil, fmt.Errorf("jwks %s: larger than %d bytes", shown, maxJWKSBytes)
	}
	return data, nil
}

// parseJWKS reads the signature keys of a JWKS that can verify transit
// checkpoints: Ed25519 (kty OKP) and P-256 (kty EC) public keys with a kid.
// Keys for encryption, other key types and curves are left out; private
// key members are ignored. A malformed set or key is an error, as is a set
// with no usable key.
func parseJWKS(data []byte) ([]broker.PublicKey, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, errors.New("not a JSON Web Key Set")
	}
	if set.Keys == nil {
		return nil, errors.New("not a JSON Web Key Set: no \"keys\" member")
	}
	if len(set.Keys) > maxJWKSKeys {
		return nil, fmt.Errorf("%d keys, more than %d", len(set.Keys), maxJWKSKeys)
	}
	var out []broker.PublicKey
	for i, raw := range set.Keys {
		jwk, err := jwkset.NewJWKFromRawJSON(raw, jwkset.JWKMarshalOptions{}, jwkset.JWKValidateOptions{})
		if err != nil {
			return nil, fmt.Errorf("keys[%d]: %w", i, err)
		}
		m := jwk.Marshal()
		if m.KID == "" || (m.USE != "" && m.USE != jwkset.UseSig) {
			continue
		}
		switch k := jwk.Key().(type) {
		case ed25519.PublicKey:
		case *ecdsa.PublicKey:
			if k.Curve != elliptic.P256() {
				continue
			}
		default:
			continue
		}
		out = append(out, broker.PublicKey{KID: m.KID, Alg: string(m.ALG), Key: jwk.Key()})
	}
	if len(out) == 0 {
		return nil, errors.New("no Ed25519 or P-256 signature key with a kid")
	}
	return out, nil
}
