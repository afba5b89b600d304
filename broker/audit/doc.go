// Package audit owns the audit event schema, the hash chain that links events
// (seq and prev over the exact bytes written), signed checkpoints, and Verify,
// which detects any changed, inserted, deleted or reordered line and
// truncation after the last checkpoint. It is a leaf: it imports nothing of
// keytrail.
package audit
