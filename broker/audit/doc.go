// Package audit owns the audit event schema, the hash chain that links events
// (seq and prev over the exact bytes written), signed checkpoints, and Verify,
// which detects any changed, inserted, deleted or reordered line before a
// chain's last line and counts the lines after its last checkpoint, which no
// signature covers. Lines removed from the end of a chain up to a checkpoint
// (its newest files removed whole, for one) leave no trace in the files; the
// report gives each chain's last seq and time to compare with a copy kept
// elsewhere, and VerifyOptions.ExpectSeq checks that each chain reaches a
// seq seen outside the files. It is a leaf: it imports nothing of keytrail.
package audit
