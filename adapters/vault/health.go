package vault

import (
	"cmp"
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker"
)

// Health checks Vault through sys/health for readiness. An uninitialised,
// sealed or removed node, an HA node that lost its cluster, or a node of a
// DR secondary cluster (Vault Enterprise: it serves no client request until
// promoted) is ErrUnavailable; a standby or performance standby is healthy,
// because it forwards the broker's requests to the active node, and so is a
// performance secondary. sys/health needs no token.
func Health(ctx context.Context, c *vaultapi.Client) error {
	h, err := c.Sys().HealthWithContext(ctx)
	if err != nil {
		return translate("health", err)
	}
	switch {
	case !h.Initialized:
		return broker.Unavailable(ReasonUnavailable, retryOutage, errors.New("vault health: not initialized"))
	case h.Sealed:
		return broker.Unavailable(ReasonUnavailable, retryOutage, errors.New("vault health: sealed"))
	case h.RemovedFromCluster != nil && *h.RemovedFromCluster:
		return broker.Unavailable(ReasonUnavailable, retryOutage, errors.New("vault health: node removed from cluster"))
	case h.HAConnectionHealthy != nil && !*h.HAConnectionHealthy:
		return broker.Unavailable(ReasonUnavailable, retryOutage, errors.New("vault health: HA connection unhealthy"))
	case h.ReplicationDRMode == "secondary":
		return broker.Unavailable(ReasonUnavailable, retryOutage, errors.New("vault health: DR secondary (serves no client requests until promoted)"))
	}
	return nil
}

// TokenHealth checks that Vault accepts the client's token (the broker's
// own, as Login keeps it) with auth/token/lookup-self, which every broker
// policy allows: sys/health answers for a Vault that refuses a revoked or
// expired broker token all the same, while every mint fails. A refusal is
// ErrUnavailable with ReasonDenied, as the mints report it.
func TokenHealth(ctx context.Context, c *vaultapi.Client) error {
	if _, err := c.Auth().Token().LookupSelfWithContext(ctx); err != nil {
		return translate("lookup-self of the broker token", err)
	}
	return nil
}

// DefaultTokenHealthTTL is how long TokenChecker keeps a successful
// lookup-self when no TTL is configured.
const DefaultTokenHealthTTL = time.Second

// TokenCheckerOptions configure NewTokenChecker.
type TokenCheckerOptions struct {
	Client *vaultapi.Client // required
	TTL    time.Duration    // how long a success is kept; default DefaultTokenHealthTTL
	Now    func() time.Time // default time.Now
}

// TokenChecker is TokenHealth for frequent callers (/readyz, asked by
// every load balancer and kubelet every few seconds): a successful
// lookup-self is kept for TTL, never past the token's own expiry
// (expire_time, else ttl) nor for another token (Login replaced it); a
// failure is not kept, so the next call asks Vault again. Callers arriving
// while a lookup is in flight share its answer, each within its own ctx.
type TokenChecker struct {
	c   *vaultapi.Client
	ttl time.Duration
	now func() time.Time

	mu       sync.Mutex
	okToken  string    // the token the last success was for
	okUntil  time.Time // until when it answers
	inflight *tokenLookup
}

type tokenLookup struct {
	token string // the token it looks up
	done  chan struct{}
	err   error
}

// NewTokenChecker validates o and returns a TokenChecker.
func NewTokenChecker(o TokenCheckerOptions) (*TokenChecker, error) {
	var errs []error
	if o.Client == nil {
		errs = append(errs, errors.New("vault token checker: client is required"))
	}
	if o.TTL < 0 {
		errs = append(errs, errors.New("vault token checker: ttl must not be negative"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	return &TokenChecker{c: o.Client, ttl: cmp.Or(o.TTL, DefaultTokenHealthTTL), now: now}, nil
}

// Check answers as TokenHealth, from the kept success when there is one.
func (tc *TokenChecker) Check(ctx context.Context) error {
	token := tc.c.Token()
	tc.mu.Lock()
	if token == tc.okToken && tc.now().Before(tc.okUntil) {
		tc.mu.Unlock()
		return nil
	}
	l := tc.inflight
	if l == nil || l.token != token {
		// None in flight, or one for a token the client no longer uses
		// (a new login, a token_file change): its answer is not this
		// token's.
		l = &tokenLookup{token: token, done: make(chan struct{})}
		tc.inflight = l
		// The lookup outlives a caller that gives up (the client's own
		// timeout bounds it), so the callers sharing it are not failed
		// by another's cancellation.
		go tc.lookup(context.WithoutCancel(ctx), token, l)
	}
	tc.mu.Unlock()
	select {
	case <-l.done:
		return l.err
	case <-ctx.Done():
		return translate("lookup-self of the broker token", ctx.Err())
	}
}

func (tc *TokenChecker) lookup(ctx context.Context, token string, l *tokenLookup) {
	sec, err := tc.lookupSelf(ctx, token)
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.inflight == l {
		tc.inflight = nil
	}
	if err != nil {
		l.err = translate("lookup-self of the broker token", err)
		close(l.done)
		return
	}
	now := tc.now()
	until := now.Add(tc.ttl)
	if sec != nil && sec.Data != nil {
		// A token without expiry (root) has neither.
		et, _ := sec.Data["expire_time"].(string)
		if exp, err := time.Parse(time.RFC3339Nano, et); err == nil {
			until = minTime(until, exp)
		} else if ttl, err := sec.TokenTTL(); err == nil && ttl > 0 {
			until = minTime(until, now.Add(ttl))
		}
	}
	if token == tc.c.Token() {
		// (A lookup of a replaced token does not push out the success of
		// the token in use.)
		tc.okToken, tc.okUntil = token, until
	}
	close(l.done)
}

// lookupSelf is lookup-self made with token itself, not with whatever
// token the client holds when the request goes out.
func (tc *TokenChecker) lookupSelf(ctx context.Context, token string) (*vaultapi.Secret, error) {
	r := tc.c.NewRequest(http.MethodGet, "/v1/auth/token/lookup-self")
	r.ClientToken = token
	//nolint:staticcheck // RawRequestWithContext is the way to set a request's own token.
	resp, err := tc.c.RawRequestWithContext(ctx, r)
	if resp != nil {
		defer resp.Body.Close()
	}
	if err != nil {
		return nil, err
	}
	return vaultapi.ParseSecret(resp.Body)
}

// HealthChecker is Health as a broker.Pinger for /readyz.
type HealthChecker struct {
	Client *vaultapi.Client
}

var _ broker.Pinger = HealthChecker{}

// Ping runs Health.
func (h HealthChecker) Ping(ctx context.Context) error {
	if h.Client == nil {
		return broker.Unavailable(ReasonConfig, retryMisconfig, errors.New("vault health: no client"))
	}
	return Health(ctx, h.Client)
}
