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

// TestDockerfileVolumeOwnedByUser: Docker creates a VOLUME's mount point
// (and initialises a new named or anonymous volume) from the image's
// directory at that path, owner and mode included; a path the image does
// not have becomes a root-owned 0755 directory, where the non-root USER
// cannot create the audit log. So every VOLUME of the final stage must be a
// directory the image creates for the USER: a COPY --from the build stage
// with --chown of the USER, of a directory that the build stage makes.
func TestDockerfileVolumeOwnedByUser(t *testing.T) {
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	df, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(df)
	froms := regexp.MustCompile(`(?m)^FROM `).FindAllStringIndex(text, -1)
	if len(froms) < 2 {
		t.Fatalf("Dockerfile has %d stages, want a build stage and a final one", len(froms))
	}
	build, final := text[:froms[len(froms)-1][0]], text[froms[len(froms)-1][0]:]
	user := regexp.MustCompile(`(?m)^USER (\S+)$`).FindStringSubmatch(final)
	if user == nil {
		t.Fatal("final stage has no USER")
	}
	vols := regexp.MustCompile(`(?m)^VOLUME \["([^"]+)"\]$`).FindAllStringSubmatch(final, -1)
	if len(vols) == 0 {
		t.Fatal("final stage declares no VOLUME (the audit log's directory)")
	}
	copies := regexp.MustCompile(`(?m)^COPY --from=build --chown=(\S+) (\S+) (\S+)$`).FindAllStringSubmatch(final, -1)
	for _, v := range vols {
		var src string
		for _, c := range copies {
			if c[3] == v[1] || c[3] == v[1]+"/" {
				if c[1] != user[1] {
					t.Errorf("VOLUME %s is copied with --chown=%s, want the USER %s", v[1], c[1], user[1])
				}
				src = strings.TrimSuffix(c[2], "/")
			}
		}
		if src == "" {
			t.Errorf("VOLUME %s: the image does not create it for USER %s (no COPY --from=build --chown=%s DIR %s): Docker makes it root-owned and the broker cannot write its audit log there",
				v[1], user[1], user[1], v[1])
			continue
		}
		made := false
		for _, r := range regexp.MustCompile(`(?m)^RUN (.*)$`).FindAllStringSubmatch(build, -1) {
			if regexp.MustCompile(`\b(mkdir|install -d)\b.*\s` + regexp.QuoteMeta(src) + `(\s|$)`).MatchString(r[1]) {
				made = true
			}
		}
		if !made {
			t.Errorf("VOLUME %s is copied from %s, which no RUN of the build stage creates (mkdir or install -d)", v[1], src)
		}
	}
}

// TestDockerfileNoDemoPolicy: the image carries no policy. The example
// policies trust `keytrail dev`'s demo issuer (plain HTTP on
// 127.0.0.1:7701) and give its secops tokens admin roles; a policy
// directory merges every *.yaml in it, so a deployment that mounts its own
// policy files into the image's /etc/keytrail/policies (one file each, as
// `docker run -v` or a subPath mount does) would also trust whatever listens
// on the container's loopback (any sidecar of the pod) to mint identities.
func TestDockerfileNoDemoPolicy(t *testing.T) {
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	df, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(df)
	froms := regexp.MustCompile(`(?m)^FROM `).FindAllStringIndex(text, -1)
	if len(froms) < 2 {
		t.Fatalf("Dockerfile has %d stages, want a build stage and a final one", len(froms))
	}
	final := text[froms[len(froms)-1][0]:]
	for _, c := range regexp.MustCompile(`(?m)^(?:COPY|ADD) (.*)$`).FindAllStringSubmatch(final, -1) {
		if strings.Contains(c[1], "policies") {
			t.Errorf("the final stage copies a policy into the image (%q): a demo or example policy must not ship in it", strings.TrimSpace(c[0]))
		}
	}
}
