//go:build !linux

package auditfile

// openDirect: direct I/O is used on Linux only; elsewhere the sink fsyncs
// the audit file.
func openDirect(string) (journalFile, error) { return nil, ErrNoDirectIO }
