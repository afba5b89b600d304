package proxy

import (
	"errors"
	"io"
)

// NormalizePath exposes the path normaliser to the external tests and the
// fuzz target.
func NormalizePath(escaped string) (string, error) {
	p, why := normalizePath(escaped)
	if why != "" {
		return "", errors.New(why)
	}
	return p, nil
}

// PublicAddr exposes the dialer's address filter.
var PublicAddr = publicAddr

// SecretForms and NewRedactReader expose the response scan.
var (
	SecretForms     = newFormSet
	NewRedactReader = func(src io.ReadCloser, forms *formSet) io.Reader {
		return newRedactReader(src, forms, newRedactBufferPool())
	}
)

// DropEarlyFlush makes p's responses drop their first flush, as when
// ReverseProxy's early header flush of a streamed response (on a timer)
// loses the race to a refusal at the body's first read.
func DropEarlyFlush(p *Proxy) { p.dropEarlyFlush.Store(true) }
