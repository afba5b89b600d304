// Package piperead owns the one way keytrail reads a pipe it was given in
// place of a file (a named pipe, bash's <(cmd), /dev/stdin fed by one):
// opened without blocking, read to its end within a time limit or until
// its context ends, a writer that has not come yet waited for, and an
// unnamed pipe whose writer has exited not waited past. It promises to
// read at most one buffer past the limit its caller sets, and to say
// nothing about what it read in an error. The identity-token file
// (broker/client) and `audit verify --jwks` read pipes through it.
package piperead
