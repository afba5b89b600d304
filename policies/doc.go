// Package policies loads keytrail policy files strictly (unknown fields are
// errors), validates them as a whole (every problem reported with its path),
// compiles them into an immutable Policy and evaluates identities against it,
// deny by default. It is a leaf: it imports nothing of keytrail.
//
// # Loading
//
// Load takes one YAML file or a directory of *.yaml/*.yml files (sorted by
// name, not recursive; a b.YAML there is a problem, not skipped) that are
// merged into one policy; Parse takes one
// document. Files are decoded strictly, defaults are applied
// (max_token_lifetime 24h when omitted, a written 0 being a problem; rate
// and proxy_rate burst ceil(per_second), proxy methods [GET], header format "{secret}";
// a written 0 burst, empty methods list or empty format is a problem, not
// the default),
// then everything is validated at once. A failure
// is a *ValidationError whose Unwrap() []error returns one *Problem per
// problem, printed as "<file>: <path>: <message> (line <n>)", the line of
// the field (of the entry that lacks it, when it is not written), e.g.
//
//	policies/a.yaml: grants[2].proxy.upstream: must be https (line 31)
//
// YAML errors are problems too, with the line as path ("line 7").
// Warnings lists, in the same form, what is valid but likely not meant (an
// unquoted claims value 1.0, which no number claim equals; a
// max_token_lifetime under 1s, which refuses nearly every token).
//
// # Matching
//
// Match finds the one workload of an issuer that an identity's claims
// select. A workload matches when all of these hold:
//
//   - its match.issuer is the issuer the token was verified against;
//   - claims["sub"] is a string equal to match.subject, or matched by
//     match.subject_pattern;
//   - every match.claims entry equals the claim at that dotted path, and every
//     match.claim_patterns entry matches it.
//
// Patterns are Go regexps anchored at both ends (wrapped as ^(?:...)$).
// Claim paths are resolved by ClaimValue, where keys may contain dots
// ("kubernetes.io.namespace" finds claims["kubernetes.io"]["namespace"]).
// Scalar claims compare in their ClaimString form: strings as they are,
// numbers in shortest decimal form (3.0 is "3"), bools as "true"/"false".
// An array claim matches when any of its scalar elements does (so
// groups: [dev, secops] matches claims: {groups: secops}). Objects and null
// never match. A token without iss (a JWT-SVID, which only a SPIFFE trust
// domain's issuer takes) is matched on "iss" as having the issuer's trust
// domain id, the identity's iss; an entry on "iss" that the issuer's value
// cannot pass draws a warning: it never matches.
//
// Deny by default: no match is ErrNoMatch, and more than one is ErrAmbiguous,
// never "the first one". Policy authors make workload matches disjoint;
// validation rejects two workloads with identical match blocks.
//
// Admins match the same way (the subject is optional for them, but a match
// must say something); MatchAdmin returns the first admin, in declaration
// order, that matches and holds the role asked for: an identity listed
// under several admins holds every role any of them grants.
package policies
