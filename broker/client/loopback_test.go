package client

import (
	"testing"

	"github.com/keytrail/keytrail/policies"
)

// loopbackSpellings are host spellings the client and the policy (and the
// keytrail command) must classify alike: a broker address one accepts as
// plain-http loopback the other must not refuse.
var loopbackSpellings = []string{
	"localhost", "LOCALHOST", "LocalHost", "localHOST", "localhoſt",
	"localhost.", "localhost6", "xlocalhost", "localhost.example.com", "",
	"127.0.0.1", "127.1.2.3", "127.255.255.255", "128.0.0.1", "0.0.0.0",
	"::1", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1", "::", "[::1]",
	"10.0.0.1", "example.com", "EXAMPLE.COM",
}

// TestIsLoopbackAgreesWithPolicies checks that the client's own loopback
// test (it imports no project package) agrees with policies.IsLoopbackHost
// over the same spellings: "LOCALHOST" was non-loopback to the client.
func TestIsLoopbackAgreesWithPolicies(t *testing.T) {
	for _, h := range loopbackSpellings {
		if got, want := isLoopback(h), policies.IsLoopbackHost(h); got != want {
			t.Errorf("isLoopback(%q) = %v, policies.IsLoopbackHost = %v", h, got, want)
		}
	}
}

// TestCheckAddrLoopbackAnyCase checks that plain http to localhost spelled
// in any case is accepted without AllowInsecureHTTP (by CheckAddr, New and
// the GitHub Actions request URL), as the keytrail command accepts it, and
// plain http to another host is still refused.
func TestCheckAddrLoopbackAnyCase(t *testing.T) {
	for _, addr := range []string{"http://LOCALHOST:7700", "http://LocalHost:7700/", "http://localhost:7700"} {
		if _, err := CheckAddr(addr, false); err != nil {
			t.Errorf("CheckAddr(%q, false): %v", addr, err)
		}
		if _, err := New(Options{Addr: addr}); err != nil {
			t.Errorf("New(%q): %v", addr, err)
		}
		if _, err := NewGitHubActionsIdentity(GitHubActionsOptions{RequestURL: addr + "/token?api-version=2.0", RequestToken: "t"}); err != nil {
			t.Errorf("NewGitHubActionsIdentity(%q): %v", addr, err)
		}
	}
	if _, err := CheckAddr("http://LOCALHOST.example.com:7700", false); err == nil {
		t.Error("CheckAddr accepted plain http to a non-loopback host")
	}
}
