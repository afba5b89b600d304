package piperead

import "golang.org/x/sys/unix"

// unnamedPipe reports whether fd is an unnamed pipe (pipe(2): bash's
// <(cmd), named /dev/fd/N), not a named one (mkfifo). Nothing can open an
// unnamed pipe for writing once its writers have closed it (/proc/PID/fd
// aside), so its end is final; a named pipe's next writer may come.
func unnamedPipe(fd uintptr) bool {
	var st unix.Statfs_t
	return unix.Fstatfs(int(fd), &st) == nil && st.Type == unix.PIPEFS_MAGIC
}
