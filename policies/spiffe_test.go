package policies_test

import (
	"strings"
	"testing"

	"github.com/keytrail/keytrail/policies"
)

// TestParseSPIFFEID: the SPIFFE ID spec's rules (§2), strictly: lower-case
// trust domain of [a-z0-9._-], no port, user info, query or fragment, path
// segments of [a-zA-Z0-9._-], none empty, "." or "..", no trailing slash.
func TestParseSPIFFEID(t *testing.T) {
	tests := []struct {
		id       string
		td, path string
		ok       bool
	}{
		{"spiffe://example.org", "example.org", "", true},
		{"spiffe://example.org/ns/prod/sa/api", "example.org", "/ns/prod/sa/api", true},
		{"spiffe://a_b-c.9/A.b_C-9", "a_b-c.9", "/A.b_C-9", true},
		{"spiffe://" + strings.Repeat("a", 255) + "/x", strings.Repeat("a", 255), "/x", true},
		{"spiffe://" + strings.Repeat("a", 256) + "/x", "", "", false},
		{"", "", "", false},
		{"spiffe://", "", "", false},
		{"spiffe:///path", "", "", false},
		{"SPIFFE://example.org/x", "", "", false},
		{"spiffe:example.org/x", "", "", false},
		{"https://example.org/x", "", "", false},
		{"spiffe://Example.org/x", "", "", false},
		{"spiffe://example.org:443/x", "", "", false},
		{"spiffe://user@example.org/x", "", "", false},
		{"spiffe://example.org/x?q=1", "", "", false},
		{"spiffe://example.org/x#f", "", "", false},
		{"spiffe://example.org/", "", "", false},
		{"spiffe://example.org/x/", "", "", false},
		{"spiffe://example.org//x", "", "", false},
		{"spiffe://example.org/./x", "", "", false},
		{"spiffe://example.org/x/..", "", "", false},
		{"spiffe://example.org/x%2Fy", "", "", false},
		{"spiffe://example.org/x y", "", "", false},
		{"spiffe://exa%6dple.org/x", "", "", false},
		// The SPIFFE ID spec (§2.3): at most 2048 bytes, the whole URI.
		{"spiffe://example.org/" + strings.Repeat("a", 2048-len("spiffe://example.org/")), "example.org", "/" + strings.Repeat("a", 2048-len("spiffe://example.org/")), true},
		{"spiffe://example.org/" + strings.Repeat("a", 2049-len("spiffe://example.org/")), "", "", false},
		{"spiffe://example.org" + strings.Repeat("/a", 1024), "", "", false},
	}
	for _, tc := range tests {
		td, path, err := policies.ParseSPIFFEID(tc.id)
		if (err == nil) != tc.ok || td != tc.td || path != tc.path {
			t.Errorf("ParseSPIFFEID(%q) = %q, %q, %v; want %q, %q, ok=%v", tc.id, td, path, err, tc.td, tc.path, tc.ok)
		}
	}
	if _, _, err := policies.ParseSPIFFEID("spiffe://example.org/" + strings.Repeat("a", 2100)); err == nil || !strings.Contains(err.Error(), "2048 bytes") {
		t.Errorf("ParseSPIFFEID(2121 bytes) error = %v, want one naming the 2048-byte limit", err)
	}
	// A workload's id has a path; a trust domain's has none.
	if td, ok := policies.SPIFFEWorkloadTrustDomain("spiffe://example.org/api"); !ok || td != "example.org" {
		t.Errorf(`SPIFFEWorkloadTrustDomain(workload id) = %q, %v`, td, ok)
	}
	if _, ok := policies.SPIFFEWorkloadTrustDomain("spiffe://example.org"); ok {
		t.Error(`SPIFFEWorkloadTrustDomain("spiffe://example.org") = ok, want false (a trust domain id names no workload)`)
	}
	if td := (&policies.Issuer{Issuer: "spiffe://example.org"}).TrustDomain(); td != "example.org" {
		t.Errorf("TrustDomain() = %q", td)
	}
	for _, iss := range []string{"https://example.org", "spiffe://example.org/x", "SPIFFE://example.org"} {
		if td := (&policies.Issuer{Issuer: iss}).TrustDomain(); td != "" {
			t.Errorf("Issuer{%q}.TrustDomain() = %q, want none", iss, td)
		}
	}
}
