package proxy

import (
	"net/http"
	"testing"
)

// The stripped request headers are deleted from the forwarded request's
// header map by these names, as they are: net/http keys a request's
// headers in canonical form, so a name written otherwise would never
// match and the header would go upstream.
func TestStrippedRequestHeadersAreCanonical(t *testing.T) {
	for _, name := range strippedRequestHeaders {
		if c := http.CanonicalHeaderKey(name); c != name {
			t.Errorf("strippedRequestHeaders lists %q, want its canonical form %q", name, c)
		}
	}
}
