// Package vault is keytrail's only door to HashiCorp Vault: every Vault call
// the broker makes goes through the types of this package, built on
// github.com/hashicorp/vault/api.
//
// It owns:
//
//   - NewClient: a *vaultapi.Client with retries switched off (a retried
//     create can mint a credential nobody recorded), a per-request timeout,
//     and nothing taken implicitly from the environment (no VAULT_TOKEN,
//     VAULT_SKIP_VERIFY, VAULT_AGENT_ADDR, VAULT_NAMESPACE, VAULT_HEADERS...):
//     the caller passes the address, token, CA and namespace it means (the
//     namespace also on the clone that logs in);
//   - TokenMinter: broker.Minter and broker.Revoker for grants of kind
//     vault_token (orphan service tokens tagged with the issuance);
//   - JWTMinter: broker.Minter for grants of kind jwt (JWTs signed by a
//     transit key; the private key never leaves Vault);
//   - TransitKeys: broker.PublicKeySource listing the transit public keys;
//   - Health / HealthChecker: readiness through sys/health; TokenHealth:
//     whether Vault accepts the broker's own token (lookup-self), and
//     TokenChecker, which keeps a success for a second for /readyz.
//
// Errors: every error returned is a *broker.Error of kind
// broker.ErrUnavailable (the workload cannot fix a Vault problem; the broker
// answers 503 and hands nothing out) or, for a request the adapter cannot
// serve at all, broker.ErrInvalidRequest. Its Safe text is generic; Vault's
// own messages only go into Err, for the log. Reason tells the cases apart:
//
//	vault_unavailable   connection refused/reset, timeout, ctx deadline, 5xx,
//	                    sealed (503), rate limited (429): retry after 2s
//	vault_denied        401/403: the broker's own token is invalid, expired or
//	                    lacks a capability — a misconfiguration an operator
//	                    must fix; still 503 (never 403: the workload was
//	                    allowed, the broker could not act), retry after 30s
//	vault_rejected      other 4xx (e.g. a grant names a policy the broker
//	                    token does not hold): misconfiguration, retry after 30s
//	vault_bad_response  Vault answered 2xx with something unusable
//	vault_config        the grant or issuance cannot be served by this adapter
//
// # Least-privilege Vault policy for the broker's token
//
// Tokens are minted with auth/token/create-orphan, which needs only the
// update capability on that path (auth/token/create with no_parent=true would
// need sudo). Without sudo, Vault only lets a token hand out policies it
// holds itself, so the broker token must also carry every policy that a
// vault_token grant lists — or use a token role (TokenMinterOptions.Role,
// keytrail's vault.token_role): auth/token/create/<role> with a role that
// has orphan=true and allowed_policies set, which needs update on that path
// and read on auth/token/roles/<role> (TokenMinter.CheckRole) and is the
// least-privilege choice. BrokerPolicy returns HCL equivalent to:
//
//	path "auth/token/create-orphan"     { capabilities = ["update"] }
//	path "auth/token/revoke-accessor"   { capabilities = ["update"] }
//	path "transit/keys/keytrail-signing" { capabilities = ["read"] }
//	path "transit/sign/keytrail-signing" { capabilities = ["update"] }
//
// sys/health needs no token.
package vault
