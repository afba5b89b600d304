package main

import "golang.org/x/sys/unix"

// jwksUnnamedPipe reports whether fd is an unnamed pipe (bash's <(cmd),
// /dev/stdin fed by one): read empty, its writer has exited, and no other
// can come, so it is not waited for.
func jwksUnnamedPipe(fd uintptr) bool {
	var st unix.Statfs_t
	return unix.Fstatfs(int(fd), &st) == nil && st.Type == unix.PIPEFS_MAGIC
}
