// Package policies loads keytrail policy files strictly (unknown fields are
// errors), validates them as a whole (every problem reported with its path),
// compiles them into an immutable Policy and evaluates identities against it,
// deny by default. It is a leaf: it imports nothing of keytrail.
package policies
