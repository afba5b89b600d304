package e2e

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/e2e/harness"
)

// TestDockerfileBuildStage runs the Dockerfile's build command outside
// Docker (no engine runs here) and checks the result is the static,
// non-root, read-only-friendly image the Dockerfile promises.
func TestDockerfileBuildStage(t *testing.T) {
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	df, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(df)
	m := regexp.MustCompile(`(?m)^RUN (CGO_ENABLED=0 [^\n]*go build [^\n]*)$`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("Dockerfile has no 'RUN CGO_ENABLED=0 ... go build' line")
	}
	for _, want := range []string{"FROM gcr.io/distroless/static", "USER 65532:65532", `ENTRYPOINT ["/usr/local/bin/keytrail", "server"]`, "AS build"} {
		if !strings.Contains(text, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	out := t.TempDir()
	script := strings.ReplaceAll(m[1], "/out/keytrail", filepath.Join(out, "keytrail"))
	script = strings.ReplaceAll(script, "${VERSION}", "test")
	cmd := exec.Command("sh", "-c", script)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build stage %q: %v\n%s", script, err, b)
	}
	f, err := elf.Open(filepath.Join(out, "keytrail"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("binary has an ELF interpreter: not static, would not run on distroless/static")
		}
	}
	v, err := exec.Command(filepath.Join(out, "keytrail"), "version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(v)) != "keytrail test" {
		t.Errorf("built binary's version = %q, %v", v, err)
	}
	// Every path the build stage copies must exist.
	for _, c := range regexp.MustCompile(`(?m)^COPY (\S+) `).FindAllStringSubmatch(text, -1) {
		if strings.HasPrefix(c[1], "--") {
			continue
		}
		for _, p := range strings.Fields(c[1]) {
			if _, err := os.Stat(filepath.Join(root, p)); err != nil {
				t.Errorf("Dockerfile copies %s: %v", p, err)
			}
		}
	}
}
