package vault

// The minimum Vault policy of the broker's own token, derived from the
// keytrail policy it serves.

import (
	"fmt"
	"slices"
	"strings"

	"github.com/keytrail/keytrail/policies"
)

// BrokerPolicyOptions configure MinimumBrokerPolicy.
type BrokerPolicyOptions struct {
	TransitMount string // mount of the transit keys of jwt grants (default "transit")
	// ReaderPolicies are the DynamicMinter's reader policies (default
	// [DefaultReaderPolicy]); only used for HeldPolicies.
	ReaderPolicies []string
	// Reconcile adds InventoryPolicy, for the Vault token reconciliation:
	// listing token accessors needs sudo, so it is not part of the minimum
	// and is off unless asked for.
	Reconcile bool
	// CheckpointTransitKey is the transit key of audit.checkpoint_transit_key
	// (read and sign, like a jwt grant's key); empty when none.
	CheckpointTransitKey string
	// TokenRole is vault.token_role: vault_token grants and the dynamic
	// minter's reader tokens are made through auth/token/create/<role>
	// (update), after reading the role (read), instead of
	// auth/token/create-orphan. The role's allowed_policies, not the broker
	// token's own policies, then bound what it hands out.
	TokenRole string
}

// MinimumBrokerPolicy returns the HCL of the least-privilege Vault policy
// the broker's own token needs to serve pol, and nothing more:
//
//   - its own token: read auth/token/lookup-self (the login check, and
//     TokenChecker for /readyz), update auth/token/renew-self
//     (Login.Run's renewals) and update auth/token/revoke-self (a login
//     token the broker will not use: one with a use limit, one whose
//     start-up failed before serving, or one a new login replaced); the
//     "default" policy has all
//     three, but a broker token may be created without it;
//   - BrokerPolicy: mint orphan tokens (through o.TokenRole when set),
//     revoke them by accessor, and read and sign with the transit keys the
//     jwt grants name;
//   - proxy grants: read on each grant's vault_kv path;
//   - vault_dynamic grants: DynamicBrokerPolicy (revoke leases);
//   - pki grants: PKIBrokerPolicy of each issue path;
//   - the audit checkpoint transit key, when o.CheckpointTransitKey is set;
//   - with o.Reconcile only: InventoryPolicy (sudo list on
//     auth/token/accessors), which the reconciliation needs.
//
// Logging in (approle, kubernetes) and sys/health need no capability.
// Vault's subset rule adds what no HCL can say: without sudo, the token
// must also hold the policies it hands out; HeldPolicies lists them.
// Paths are sorted and listed once, so the result is stable for a policy.
func MinimumBrokerPolicy(pol *policies.Policy, o BrokerPolicyOptions) (string, error) {
	if pol == nil {
		return "", fmt.Errorf("vault broker policy: no keytrail policy")
	}
	if r := o.TokenRole; r != "" && !PlainRoleName(r) {
		return "", fmt.Errorf("vault broker policy: token role %q: must be a plain name", r)
	}
	mount := o.TransitMount
	if mount == "" {
		mount = "transit"
	}
	var keys, kv, pki []string
	dynamic := false
	for _, g := range pol.Grants() {
		switch {
		case g.JWT != nil:
			keys = append(keys, g.JWT.TransitKey)
		case g.Proxy != nil:
			kv = append(kv, g.Proxy.Secret.VaultKV)
		case g.VaultDynamic != nil:
			dynamic = true
		case g.PKI != nil:
			pki = append(pki, g.PKI.Path)
		}
	}
	if o.CheckpointTransitKey != "" {
		keys = append(keys, o.CheckpointTransitKey)
	}
	keys, kv, pki = sortedSet(keys), sortedSet(kv), sortedSet(pki)

	var b strings.Builder
	b.WriteString("# keytrail broker: minimum policy for its own token (generated)\n")
	b.WriteString("path \"auth/token/lookup-self\" {\n  capabilities = [\"read\"]\n}\n")
	b.WriteString("path \"auth/token/renew-self\" {\n  capabilities = [\"update\"]\n}\n")
	b.WriteString("path \"auth/token/revoke-self\" {\n  capabilities = [\"update\"]\n}\n")
	b.WriteString(brokerPolicy(o.TokenRole, mount, keys...))
	for _, p := range kv {
		fmt.Fprintf(&b, "path %q {\n  capabilities = [\"read\"]\n}\n", p)
	}
	if dynamic {
		b.WriteString(DynamicBrokerPolicy())
	}
	// Grants on one mount share <mount>/revoke, and issue paths through
	// different issuers of one role share <mount>/roles/<role>: each is
	// listed once, where it first appears.
	seen := map[string]bool{}
	for _, p := range pki {
		stanzas, err := pkiStanzas(p)
		if err != nil {
			return "", fmt.Errorf("vault broker policy: %w", err)
		}
		for _, s := range stanzas {
			if !seen[s.path] {
				seen[s.path] = true
				b.WriteString(s.hcl())
			}
		}
	}
	if o.Reconcile {
		b.WriteString(InventoryPolicy())
	}
	return b.String(), nil
}

// HeldPolicies returns the Vault policies the broker's token must hold
// besides its own (Vault's subset rule for auth/token/create-orphan
// without sudo): every policy of pol's vault_token grants and "default"
// (Vault gives a child token the default policy only when its parent holds
// it, and workloads expect lookup-self on their tokens), and the reader
// policies when pol has vault_dynamic grants. Sorted, each once. With
// o.TokenRole none of them is needed: vault_token grants and the dynamic
// minter's reader tokens are made through the role, whose allowed_policies
// take the subset rule's place.
func HeldPolicies(pol *policies.Policy, o BrokerPolicyOptions) []string {
	if pol == nil {
		return nil
	}
	var out []string
	for _, g := range pol.Grants() {
		switch {
		case g.VaultToken != nil && o.TokenRole == "":
			out = append(out, "default")
			out = append(out, g.VaultToken.Policies...)
		case g.VaultDynamic != nil && o.TokenRole == "":
			if len(o.ReaderPolicies) == 0 {
				out = append(out, DefaultReaderPolicy)
			} else {
				out = append(out, o.ReaderPolicies...)
			}
		}
	}
	return sortedSet(out)
}

func sortedSet(s []string) []string {
	s = slices.DeleteFunc(s, func(v string) bool { return v == "" })
	slices.Sort(s)
	return slices.Compact(s)
}
