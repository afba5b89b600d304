package trace

import (
	"io"
	"os"

	"github.com/keytrail/keytrail/broker/audit"
)

// SetAfterListHook makes l call f in each refresh after it listed the
// rotated files and before it looks at the audit file itself: a rotation
// made by f is one that raced the refresh.
func SetAfterListHook(l *Live, f func()) { l.afterList = f }

// SetReadWrapper makes l read each audit file it indexes through
// wrap(f): a wrapper that changes the file between two reads is a sink
// writing (or cutting back) while the refresh reads.
func SetReadWrapper(l *Live, wrap func(*os.File) audit.File) { l.wrapRead = wrap }

// SetAfterReadHook makes l call f each time it has indexed what it read
// of an audit file, before it goes on: a cut and regrow made by f is one
// that came just after the read.
func SetAfterReadHook(l *Live, f func()) { l.afterRead = f }

// SetResumeReadWrapper makes l read the audit file through wrap(f) when it
// reads it back after a cut to find the last line it still holds (resume):
// a wrapper that fails is an I/O error there.
func SetResumeReadWrapper(l *Live, wrap func(io.ReaderAt) io.ReaderAt) { l.wrapResume = wrap }

// SetAfterListRotatedHook makes l call f with the rotated files each
// refresh listed, before it opens them: a file f removes is one retention
// deleted after the listing.
func SetAfterListRotatedHook(l *Live, f func(listed []string)) {
	if f == nil {
		l.afterListRotated = nil
		return
	}
	l.afterListRotated = func(listed []string) []string { f(listed); return listed }
}

// SetRotatedListingHook makes each refresh of l go on with f(listed)
// instead of the rotated files it listed: a name f leaves out is one a
// listing missed (NFS, some FUSE file systems).
func SetRotatedListingHook(l *Live, f func(listed []string) []string) { l.afterListRotated = f }

// DoneFiles is how many rotated files l remembers as read.
func DoneFiles(l *Live) int {
	l.lock()
	defer l.unlock()
	return len(l.done)
}
