package vault

import (
	"context"
	"errors"

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
