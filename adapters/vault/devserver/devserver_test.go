package devserver

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/brokertest"
)

// TestVaultBuildSaysItIsStillBuilding: the first Vault build takes 10-20
// minutes, during which the go command prints nothing; keytrail dev and the
// tests printed one line at the start and then nothing until it was done.
// A line now says the build is still going every heartbeat (a minute; here
// a millisecond), and the binary lands in place when the command ends.
func TestVaultBuildSaysItIsStillBuilding(t *testing.T) {
	dir := t.TempDir()
	tmp, bin := filepath.Join(dir, "vault.tmp"), filepath.Join(dir, "vault")
	// A build that goes on until the test lets it finish.
	cmd := exec.Command("sh", "-c", `read line; echo compiled; : > "$1"`, "sh", tmp)
	finish, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var progress brokertest.SyncBuffer
	errc := make(chan error, 1)
	go func() { errc <- runBuild(cmd, tmp, bin, &progress, time.Millisecond) }()
	deadline := time.After(20 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for strings.Count(progress.String(), "still building Vault (") < 2 {
		select {
		case err := <-errc:
			t.Fatalf("runBuild returned early: %v\n%s", err, progress.String())
		case <-deadline:
			t.Fatalf("no 'still building Vault' lines while the build ran:\n%s", progress.String())
		case <-tick.C:
		}
	}
	finish.Close()
	if err := <-errc; err != nil {
		t.Fatalf("runBuild = %v\n%s", err, progress.String())
	}
	if _, err := os.Stat(bin); err != nil {
		t.Errorf("binary not in place: %v", err)
	}
	out := progress.String()
	if !strings.HasPrefix(out, "building Vault server") || !strings.Contains(out, "compiled\n") || !strings.Contains(out, "built "+bin+" in ") {
		t.Errorf("progress = %q, want the start line, the command's output and the end line", out)
	}
}

// TestLockedWriterKeepsWritesWhole: writers sharing one mutex write to a
// writer that is not safe for concurrent use (a bytes.Buffer) one Write at
// a time: every line arrives whole (and -race sees no data race).
func TestLockedWriterKeepsWritesWhole(t *testing.T) {
	var (
		buf bytes.Buffer
		mu  sync.Mutex
		wg  sync.WaitGroup
	)
	const writers, lines = 8, 200
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := LockedWriter(&mu, &buf)
			for range lines {
				fmt.Fprintf(w, "writer %d: %s\n", i, strings.Repeat("x", 64))
			}
		}()
	}
	wg.Wait()
	got := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(got) != writers*lines {
		t.Fatalf("%d lines, want %d", len(got), writers*lines)
	}
	for _, l := range got {
		if !strings.HasSuffix(l, ": "+strings.Repeat("x", 64)) || !strings.HasPrefix(l, "writer ") {
			t.Fatalf("line %q was interleaved with another", l)
		}
	}
}
