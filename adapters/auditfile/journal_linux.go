package auditfile

import (
	"errors"
	"os"
	"syscall"
)

// openDirect opens the journal for direct, synchronous writes: each write
// returns once its blocks are on the device.
func openDirect(path string) (journalFile, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_DIRECT|syscall.O_DSYNC, 0)
	if errors.Is(err, syscall.EINVAL) {
		return nil, ErrNoDirectIO
	}
	if err != nil {
		return nil, err
	}
	return f, nil
}
