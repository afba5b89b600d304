//go:build unix && !linux

package client

// unnamedPipe reports whether fd is an unnamed pipe: not told apart from a
// named one here (readPipe reads blocking where it is not Linux anyway).
func unnamedPipe(fd uintptr) bool { return false }
