//go:build linux

package harness

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

const helperEnv = "KEYTRAIL_HARNESS_HELPER"

// TestServersDieWithTheBinary: a test binary killed before its cleanups run
// (SIGKILL here; the -timeout panic or a closed output pipe in practice)
// takes the servers it started with it: a helper run of this test starts
// redis-server and a Vault dev server, prints their pids and waits; this
// test kills it and waits for both servers to be gone.
func TestServersDieWithTheBinary(t *testing.T) {
	if os.Getenv(helperEnv) == "1" {
		r := StartRedis(t)
		v := StartVault(t)
		fmt.Printf("pids %d %d\n", r.PID(), v.PID())
		select {} // until killed
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestServersDieWithTheBinary$", "-test.v", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pids [2]int
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if n, _ := fmt.Sscanf(sc.Text(), "pids %d %d", &pids[0], &pids[1]); n == 2 {
			break
		}
	}
	if pids[0] == 0 || pids[1] == 0 {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("the helper printed no server pids; its stderr:\n%s", stderr.String())
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	deadline := time.Now().Add(30 * time.Second)
	for _, pid := range pids {
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	for _, pid := range pids {
		if alive(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Errorf("server pid %d outlived the killed test binary by 30s", pid)
		}
	}
}

// alive reports whether pid is a running (not zombie) process.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...: the state follows the last ')'.
	rest := string(b[bytes.LastIndexByte(b, ')')+1:])
	return !strings.HasPrefix(strings.TrimSpace(rest), "Z")
}
