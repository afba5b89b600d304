//go:build !unix

package main

import "os"

// terminalSent: without process groups, every signal is forwarded.
func terminalSent(os.Signal) bool { return false }
