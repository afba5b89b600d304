// Package broker is keytrail's core: the domain types (Identity, Issuance, Use,
// Revocation), the ports the core needs from the outside world (Authenticator,
// Minter, Revoker, Store, AuditSink, PublicKeySource) and the Service that
// implements the workload exchange on top of them.
//
// broker imports no Vault, Redis or HTTP-server code: adapters implement the
// ports and cmd/keytrail wires them together. Its promises:
//
//   - deny by default: a credential is minted only for an authenticated
//     identity that a policy workload matches and that is allowed the grant;
//   - fail closed: no credential leaves Exchange unless its issuance is stored
//     and its audit event is durable; a credential minted before such a failure
//     is revoked again;
//   - errors carry one of the category sentinels below and a safe description;
//     the wrapped internal error is for logs only.
package broker
