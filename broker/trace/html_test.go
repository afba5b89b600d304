package trace_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// chromium returns Debian's headless-capable Chromium. The HTML report is
// tested the way a reader sees it, so a machine without it fails the test
// (scripts/test.sh installs the package "chromium").
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium is not installed (Debian package \"chromium\"): the HTML report cannot be checked")
	return ""
}

// renderDOM loads the file in headless Chromium and returns the DOM after
// its scripts ran.
func renderDOM(t *testing.T, path string) string {
	t.Helper()
	bin := chromium(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--no-first-run", "--user-data-dir="+t.TempDir(), "--dump-dom", "file://"+path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom: %v\n%s", err, stderr.String())
	}
	return string(out)
}

func TestReportHTMLInChromium(t *testing.T) {
	x := fixtureIndex(t)
	// A hostile workload name from an event: it must be shown as text, never run.
	evil := `x</script><script>document.title="pwned"</script><img src=x onerror="document.title='pwned'">`
	line := sealed(t, "chn_evil", 20*time.Second, []*audit.Event{{Type: audit.TypeIssue, IssuanceID: "iss_evil", Workload: evil, Owner: "o<b>wner</b>", Grant: "g"}})[0]
	if err := x.AddLine(line); err != nil {
		t.Fatal(err)
	}
	now := at(5 * time.Minute)
	rep, err := trace.BuildReport(trace.ReportInput{Now: now, Policy: reportPolicyT(t), Events: x.Events()})
	if err != nil {
		t.Fatal(err)
	}
	var src bytes.Buffer
	if err := rep.WriteHTML(&src); err != nil {
		t.Fatal(err)
	}
	// Self-contained: no attribute loads anything, and the CSP forbids it.
	if m := regexp.MustCompile(`(?i)\s(src|href|action|data)\s*=\s*["']?[a-z]+:`).FindString(src.String()); m != "" {
		t.Errorf("the HTML report references an external resource: %q", m)
	}
	if !strings.Contains(src.String(), `content="default-src 'none'`) {
		t.Errorf("the HTML report has no Content-Security-Policy")
	}
	path := filepath.Join(t.TempDir(), "report.html")
	if err := os.WriteFile(path, src.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	dom := renderDOM(t, path)

	// The chart was drawn by the page's script.
	if !strings.Contains(dom, `<svg id="timeline"`) {
		t.Fatalf("no timeline SVG in the rendered page:\n%s", dom)
	}
	counts := map[string]int{}
	rects := map[string]int{}
	for _, m := range regexp.MustCompile(`<rect class="(issue|use|revocation)"[^>]*data-workload="([^"]*)"[^>]*data-count="(\d+)"`).FindAllStringSubmatch(dom, -1) {
		n, _ := strconv.Atoi(m[3])
		counts[m[1]+" "+htmlUnescape(m[2])] += n
		rects[m[1]]++
	}
	wantCounts := map[string]int{"issue payments-api": 2, "use payments-api": 2, "revocation payments-api": 1, "issue reports": 1, "issue " + evil: 1}
	if diff := cmp.Diff(wantCounts, counts); diff != "" {
		t.Errorf("chart bars (kind workload -> count) = got, want want (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]int{"issue": 3, "use": 1, "revocation": 1}, rects); diff != "" {
		t.Errorf("chart bars per kind = got, want want (-want +got):\n%s", diff)
	}
	var labels []string
	for _, m := range regexp.MustCompile(`<text class="label"[^>]*>([^<]*)</text>`).FindAllStringSubmatch(dom, -1) {
		labels = append(labels, htmlUnescape(m[1]))
	}
	if diff := cmp.Diff([]string{"payments-api", "reports", evil}, labels); diff != "" {
		t.Errorf("chart row labels = got, want want (-want +got):\n%s", diff)
	}

	// What a reader sees in the summary and the tables.
	seen := map[string]string{}
	for _, id := range []string{"n-workloads", "n-active", "n-unowned", "n-shared", "n-exceptions", "n-denies"} {
		m := regexp.MustCompile(`id="` + id + `">([^<]*)<`).FindStringSubmatch(dom)
		if m != nil {
			seen[id] = m[1]
		}
	}
	wantSeen := map[string]string{"n-workloads": "4", "n-active": "3", "n-unowned": "1", "n-shared": "1", "n-exceptions": "2", "n-denies": "4"}
	if diff := cmp.Diff(wantSeen, seen); diff != "" {
		t.Errorf("summary cards = got, want want (-want +got):\n%s", diff)
	}
	for _, s := range []string{
		`<tr class="workload" data-workload="payments-api"><td><strong>payments-api</strong></td><td>team-payments</td><td class="num">1</td><td class="num">2</td><td class="num">2</td><td class="num">1</td><td class="num">1</td>`,
		`<tr class="workload" data-workload="idle-job"><td><strong>idle-job</strong></td><td>team-ops</td><td class="num">0</td>`,
		`<td>https://issuer.test</td><td>repo:evil/x:ref:main</td><td class="num">2</td>`,
		`<td>10.0.0.6, 192.0.2.9</td>`,
		`<td class="expired">expired (31 days ago)</td>`,
		`<td class="expiring">expiring (in 9 days)</td>`,
		`<tr><td>no_workload</td><td class="num">2</td></tr>`,
	} {
		if !strings.Contains(dom, s) {
			t.Errorf("the rendered page does not show %s", s)
		}
	}
	// The hostile name stayed text.
	if strings.Contains(dom, "<title>pwned") || strings.Contains(dom, `<img src="x"`) || strings.Contains(dom, "<b>wner</b>") {
		t.Errorf("a workload or owner name was interpreted as HTML:\n%s", dom)
	}
	if !strings.Contains(dom, "<title>keytrail report 2025-06-01 10:05 UTC</title>") {
		t.Errorf("the page title changed: %s", regexp.MustCompile(`<title>[^<]*</title>`).FindString(dom))
	}
}

func htmlUnescape(s string) string {
	return strings.NewReplacer("&lt;", "<", "&gt;", ">", "&quot;", `"`, "&#39;", "'", "&amp;", "&").Replace(s)
}
