package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"
)

// DefaultTokenFile is where Kubernetes mounts a projected service-account
// token when the pod spec asks for it at that path (see docs/examples).
const DefaultTokenFile = "/var/run/secrets/tokens/keytrail"

// DefaultAudience is the audience identity tokens for keytrail carry.
const DefaultAudience = "keytrail"

const maxIdentityToken = 64 << 10

// pipeReadTimeout bounds the wait for a named pipe's writer to write the
// identity token (the exchange's own bound).
var pipeReadTimeout = DefaultTimeout

// errPipeEnded is readPipe's for an unnamed pipe (bash's <(cmd),
// /dev/fd/N) read empty: its writer has exited, and none can come.
var errPipeEnded = errors.New("a pipe whose writer has exited with nothing left to read")

// IdentitySource supplies the workload's identity token. Implementations
// MUST honour ctx and MUST NOT put the token in an error.
type IdentitySource interface {
	IdentityToken(ctx context.Context) (string, error)
	// Describe names the source for messages ("file /path", "$VAR").
	Describe() string
}

// FileIdentity reads the token from a file on every call, since platforms
// (kubelet, SPIRE helpers) rotate it in place. An empty file is a
// transient IdentityError (a writer between truncate and write); a missing
// one is permanent. A pipe (a named one, or /dev/fd/N) is read to its end,
// or to the end of the token's line (a writer that lingers after writing
// it), its writer waited for until ctx ends, at most DefaultTimeout: then
// a transient IdentityError. An unnamed pipe (bash's <(cmd)) whose writer
// has exited and that holds nothing (read already, as a renewal does, or
// never written to) is a permanent IdentityError at once (on Linux). Where a pipe cannot be polled (darwin), it is
// read blocking: a writer that opened it and neither writes nor closes it
// blocks the call, ctx unheeded.
// The zero value reads DefaultTokenFile.
type FileIdentity struct {
	Path string
}

func (f FileIdentity) path() string {
	if f.Path == "" {
		return DefaultTokenFile
	}
	return f.Path
}

// Describe implements IdentitySource.
func (f FileIdentity) Describe() string { return "file " + f.path() }

// IdentityToken implements IdentitySource.
func (f FileIdentity) IdentityToken(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	// O_NONBLOCK: opening a named pipe for reading otherwise waits for a
	// writer, forever if none comes (its helper not running), ctx
	// unheeded; readPipe waits for one, within bounds. Reading a regular
	// file is not affected by it.
	fh, err := os.OpenFile(f.path(), os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return "", &IdentityError{Source: f.Describe(), Err: stripPathError(err)}
	}
	defer fh.Close()
	var b []byte
	if st, serr := fh.Stat(); serr == nil && st.Mode()&fs.ModeNamedPipe != 0 {
		var unnamed bool
		b, unnamed, err = readPipe(ctx, fh)
		if errors.Is(err, errPipeEnded) {
			// Permanent: nothing will ever be written to it. Under
			// --watch every renewal reads it again, and finds this.
			return "", &IdentityError{Source: f.Describe(), Err: errors.New(errPipeEnded.Error() +
				" (a pipe gives the token once: it was read already, or its command wrote nothing);" +
				" use a regular file, or a named pipe a helper writes the token to at each read")}
		}
		// Said as what failed; never with what was read (part of a
		// token).
		what := "a named pipe nothing was written to"
		if unnamed {
			// bash's <(cmd): its command is still running.
			what = "an unnamed pipe (<(cmd), /dev/fd/N) nothing was written to"
		}
		if len(bytes.TrimSpace(b)) > 0 {
			what = "a pipe whose writer wrote part of a token (no newline after it) and neither ended the line nor closed the pipe"
		}
		if cerr := ctx.Err(); err != nil && cerr != nil {
			// Said as what failed (Source.Fetch's last failure); not
			// wrapping cerr, as a timeout to the broker would.
			return "", &IdentityError{Source: f.Describe(), Err: errors.New(what), Transient: true}
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return "", &IdentityError{Source: f.Describe(), Err: fmt.Errorf("%s within %s", what, pipeReadTimeout), Transient: true}
		}
	} else {
		b, err = io.ReadAll(io.LimitReader(fh, maxIdentityToken+1))
	}
	if err != nil {
		return "", &IdentityError{Source: f.Describe(), Err: stripPathError(err)}
	}
	if len(bytes.TrimSpace(b)) == 0 {
		// A file that exists but is empty is most likely being rewritten
		// in place (truncate, then write, as spiffe-helper does) or not
		// filled yet by its helper: transient, so a renewal backs off and
		// keeps the last credential, and a first fetch waits up to its
		// timeout. A missing file stays permanent (a wrong path).
		return "", &IdentityError{Source: f.Describe(), Err: errors.New("empty"), Transient: true}
	}
	return checkToken(f.Describe(), string(b))
}

// stripPathError keeps the cause of an *os.PathError (the path is already
// in the message).
func stripPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func checkToken(source, tok string) (string, error) {
	if len(tok) > maxIdentityToken {
		return "", &IdentityError{Source: source, Err: fmt.Errorf("larger than %d bytes", maxIdentityToken)}
	}
	tok = strings.TrimSpace(tok)
	if tok == "" {
		return "", &IdentityError{Source: source, Err: errors.New("empty")}
	}
	if strings.ContainsAny(tok, " \t\r\n") {
		return "", &IdentityError{Source: source, Err: errors.New("not a single token (contains whitespace)")}
	}
	return tok, nil
}

// EnvIdentity reads the token from an environment variable on every call.
type EnvIdentity struct {
	Name   string
	Getenv func(string) string // default os.Getenv
}

// Describe implements IdentitySource.
func (e EnvIdentity) Describe() string { return "$" + e.Name }

// IdentityToken implements IdentitySource.
func (e EnvIdentity) IdentityToken(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if e.Name == "" {
		return "", &IdentityError{Source: "environment", Err: errors.New("no variable named")}
	}
	get := e.Getenv
	if get == nil {
		get = os.Getenv
	}
	v := get(e.Name)
	if v == "" {
		return "", &IdentityError{Source: e.Describe(), Err: errors.New("not set or empty")}
	}
	return checkToken(e.Describe(), v)
}

// GitHub Actions environment variables set when the job has
// `permissions: id-token: write`.
const (
	EnvGitHubRequestURL   = "ACTIONS_ID_TOKEN_REQUEST_URL"
	EnvGitHubRequestToken = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"
)

// GitHubActionsOptions configure a GitHubActionsIdentity.
type GitHubActionsOptions struct {
	RequestURL   string // ACTIONS_ID_TOKEN_REQUEST_URL
	RequestToken string // ACTIONS_ID_TOKEN_REQUEST_TOKEN
	Audience     string // default DefaultAudience
	HTTPClient   *http.Client
	// AllowInsecureHTTP accepts a plain-http RequestURL to a non-loopback
	// host (never needed on GitHub).
	AllowInsecureHTTP bool
}

// GitHubActionsIdentity requests a fresh OIDC token from the GitHub Actions
// runtime on every call.
type GitHubActionsIdentity struct {
	u     *url.URL
	token string
	hc    *http.Client
}

// GitHubActionsFromEnv builds the options from the runner's environment.
func GitHubActionsFromEnv(getenv func(string) string, audience string) GitHubActionsOptions {
	return GitHubActionsOptions{RequestURL: getenv(EnvGitHubRequestURL), RequestToken: getenv(EnvGitHubRequestToken), Audience: audience}
}

// NewGitHubActionsIdentity validates o.
func NewGitHubActionsIdentity(o GitHubActionsOptions) (*GitHubActionsIdentity, error) {
	if o.RequestURL == "" || o.RequestToken == "" {
		return nil, &configError{"github actions: " + EnvGitHubRequestURL + " and " + EnvGitHubRequestToken +
			" are not set: give the job `permissions: id-token: write`"}
	}
	if err := checkURL(o.RequestURL, o.AllowInsecureHTTP, true); err != nil {
		// RequestURL is not a secret, but keep the message short.
		return nil, &configError{"github actions: " + EnvGitHubRequestURL + " is not a usable URL"}
	}
	u, _ := url.Parse(o.RequestURL)
	aud := o.Audience
	if aud == "" {
		aud = DefaultAudience
	}
	q := u.Query()
	q.Set("audience", aud)
	u.RawQuery = q.Encode()
	// Never follow a redirect: net/http would re-send the Authorization
	// header (the runtime's request token) to another port or scheme of
	// the same host, plain http included, and take the token from there.
	// A caller's client is copied, not changed.
	hc := &http.Client{Timeout: 15 * time.Second}
	if o.HTTPClient != nil {
		c := *o.HTTPClient
		hc = &c
	}
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &GitHubActionsIdentity{u: u, token: o.RequestToken, hc: hc}, nil
}

// Describe implements IdentitySource.
func (g *GitHubActionsIdentity) Describe() string { return "GitHub Actions OIDC" }

// IdentityToken implements IdentitySource.
func (g *GitHubActionsIdentity) IdentityToken(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.u.String(), nil)
	if err != nil {
		return "", &IdentityError{Source: g.Describe(), Err: errors.New("building request")}
	}
	req.Header.Set("Authorization", "Bearer "+g.token)
	req.Header.Set("Accept", "application/json; api-version=2.0")
	resp, err := g.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", &IdentityError{Source: g.Describe(), Err: scrubURLError(err), Transient: true}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxIdentityToken+1))
	if err != nil {
		return "", &IdentityError{Source: g.Describe(), Err: errors.New("reading response"), Transient: true}
	}
	if resp.StatusCode != http.StatusOK {
		transient := resp.StatusCode == 429 || resp.StatusCode == 408 || resp.StatusCode >= 500
		return "", &IdentityError{Source: g.Describe(), Err: fmt.Errorf("token endpoint answered %s", resp.Status), Transient: transient}
	}
	var out struct {
		Value string `json:"value"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return "", &IdentityError{Source: g.Describe(), Err: errors.New("token endpoint answered malformed JSON")}
	}
	return checkToken(g.Describe(), out.Value)
}

// IdentityFunc adapts a function to IdentitySource.
type IdentityFunc struct {
	Name string
	Func func(ctx context.Context) (string, error)
}

// Describe implements IdentitySource.
func (f IdentityFunc) Describe() string { return f.Name }

// IdentityToken implements IdentitySource.
func (f IdentityFunc) IdentityToken(ctx context.Context) (string, error) { return f.Func(ctx) }
