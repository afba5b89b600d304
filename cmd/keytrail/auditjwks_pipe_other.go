//go:build !unix

package main

import "context"

// openJWKSPipe reads no pipe here: --jwks takes a regular file (or a URL).
func openJWKSPipe(context.Context, string) ([]byte, bool, error) { return nil, false, nil }
