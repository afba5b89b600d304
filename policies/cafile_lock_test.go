package policies

import (
	"bytes"
	"sync"
	"testing"
)

// twoCAFilesPolicy is a valid policy whose issuer names caA and whose
// proxy grant names caB as their ca_file.
func twoCAFilesPolicy(t *testing.T, caA, caB string) *Policy {
	t.Helper()
	p, err := Parse("t.yaml", []byte(doc(map[string]string{
		"issuers": `[{name: i, issuer: "https://issuer.example", jwks_url: "https://issuer.example/jwks", audiences: [keytrail], algorithms: [RS256], ca_file: "` + caA + `"}]`,
		"grants":  proxyGrant(`upstream: "https://api.example.com", ca_file: "` + caB + `", secret: {vault_kv: secret/data/x, field: key}, inject: {header: X-Api-Key}, paths: ["/x"]`),
	})))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// setReadCAFile replaces CAFile's reader for the test.
func setReadCAFile(t *testing.T, f func(string) ([]byte, error)) {
	t.Helper()
	old := readCAFile
	readCAFile = f
	t.Cleanup(func() { readCAFile = old })
}

// TestCAFileReadOfOnePathDoesNotBlockAnother: a policy whose CheckFiles
// did not run (library use) reads a ca_file at its first use. A read that
// hangs (a stalled network file system) holds up CAFile of that path
// only: before, the read ran under the policy's lock, and CAFile of every
// other path waited for it. (On the old code this test hangs until the
// go test timeout.)
func TestCAFileReadOfOnePathDoesNotBlockAnother(t *testing.T) {
	const caA, caB = "/ca/a.pem", "/ca/b.pem"
	entered, release := make(chan struct{}), make(chan struct{})
	setReadCAFile(t, func(name string) ([]byte, error) {
		if name == caA {
			close(entered)
			<-release
		}
		return []byte("bytes of " + name), nil
	})
	p := twoCAFilesPolicy(t, caA, caB)
	var wg sync.WaitGroup
	wg.Add(1)
	var gotA []byte
	go func() {
		defer wg.Done()
		gotA, _ = p.CAFile(caA)
	}()
	<-entered
	if got, err := p.CAFile(caB); err != nil || string(got) != "bytes of "+caB {
		t.Errorf("CAFile(b) while a's read is blocked = %q, %v", got, err)
	}
	close(release)
	wg.Wait()
	if string(gotA) != "bytes of "+caA {
		t.Errorf("CAFile(a) = %q", gotA)
	}
}

// TestCAFileKeepsTheFirstReadStored: two first uses of one ca_file read
// it both (outside the lock); the outcome stored first is kept, and both
// calls, and every later one, get it.
func TestCAFileKeepsTheFirstReadStored(t *testing.T) {
	const caA, caB = "/ca/a.pem", "/ca/b.pem"
	firstEntered, releaseFirst := make(chan struct{}), make(chan struct{})
	var mu sync.Mutex
	reads := 0
	setReadCAFile(t, func(name string) ([]byte, error) {
		mu.Lock()
		reads++
		n := reads
		mu.Unlock()
		if n == 1 {
			close(firstEntered)
			<-releaseFirst
			return []byte("first read, stored second"), nil
		}
		return []byte("second read, stored first"), nil
	})
	p := twoCAFilesPolicy(t, caA, caB)
	var wg sync.WaitGroup
	wg.Add(1)
	var slow []byte
	go func() {
		defer wg.Done()
		slow, _ = p.CAFile(caA)
	}()
	<-firstEntered
	fast, err := p.CAFile(caA)
	close(releaseFirst)
	wg.Wait()
	want := []byte("second read, stored first")
	if err != nil || !bytes.Equal(fast, want) || !bytes.Equal(slow, want) {
		t.Errorf("CAFile = %q, %v and %q; want both %q", fast, err, slow, want)
	}
	if later, _ := p.CAFile(caA); !bytes.Equal(later, want) {
		t.Errorf("later CAFile = %q, want %q", later, want)
	}
}
