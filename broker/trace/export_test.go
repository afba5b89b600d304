package trace

// SetAfterListHook makes l call f in each refresh after it listed the
// rotated files and before it looks at the audit file itself: a rotation
// made by f is one that raced the refresh.
func SetAfterListHook(l *Live, f func()) { l.afterList = f }
