package e2e

import (
	"bytes"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/keytrail/keytrail/e2e/harness"
)

// TestWorkloadExampleTrustsBrokerCA: the broker of docs/deploy serves
// https://keytrail.keytrail.svc, a name no public CA certifies, so its
// certificate comes from a private CA (cert-manager, the cluster's own).
// keytrail fetch trusts the system roots only (the image's are the public
// ones), and has no CA flag: a workload must point SSL_CERT_FILE at the
// broker's CA, which Go reads on Linux. Every container of
// docs/examples/kubernetes-deployment.yaml that runs keytrail fetch against
// an https broker must therefore set SSL_CERT_FILE to a file of a volume it
// mounts. The second half runs the built keytrail fetch against a TLS server
// with a private certificate: refused without SSL_CERT_FILE, trusted with it.
func TestWorkloadExampleTrustsBrokerCA(t *testing.T) {
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "docs", "examples", "kubernetes-deployment.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	fetchers := 0
	for {
		var doc map[string]any
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("kubernetes-deployment.yaml: %v", err)
		}
		if doc["kind"] != "Deployment" {
			continue
		}
		spec := deployObj(deployDig(doc, "spec", "template", "spec"))
		volumes := map[string]map[string]any{}
		for _, v := range deployList(spec["volumes"]) {
			vm := deployObj(v)
			name, _ := vm["name"].(string)
			volumes[name] = vm
		}
		for _, c := range append(deployList(spec["initContainers"]), deployList(spec["containers"])...) {
			cm := deployObj(c)
			var words []string
			for _, k := range []string{"command", "args"} {
				for _, w := range deployList(cm[k]) {
					s, _ := w.(string)
					words = append(words, s)
				}
			}
			if !strings.Contains(strings.Join(words, " "), "keytrail fetch") && !(len(words) > 1 && strings.HasSuffix(words[0], "keytrail") && words[1] == "fetch") {
				continue
			}
			env := map[string]string{}
			for _, e := range deployList(cm["env"]) {
				em := deployObj(e)
				n, _ := em["name"].(string)
				v, _ := em["value"].(string)
				env[n] = v
			}
			if !strings.HasPrefix(env["KEYTRAIL_ADDR"], "https://") {
				continue
			}
			fetchers++
			name := cm["name"]
			ca := env["SSL_CERT_FILE"]
			if ca == "" {
				t.Errorf("container %v runs keytrail fetch against %s without SSL_CERT_FILE: the broker's private CA is not trusted", name, env["KEYTRAIL_ADDR"])
				continue
			}
			mounted := false
			for _, m := range deployList(cm["volumeMounts"]) {
				mm := deployObj(m)
				mp, _ := mm["mountPath"].(string)
				vol, _ := mm["name"].(string)
				if mp != "" && strings.HasPrefix(ca, strings.TrimSuffix(mp, "/")+"/") {
					if volumes[vol] == nil {
						t.Errorf("container %v: SSL_CERT_FILE %s is on volume %q, which the pod does not define", name, ca, vol)
					}
					mounted = true
				}
			}
			if !mounted {
				t.Errorf("container %v: SSL_CERT_FILE %s is on no volume it mounts", name, ca)
			}
		}
	}
	if fetchers == 0 {
		t.Fatal("no container of the example runs keytrail fetch against an https broker")
	}

	// What the example relies on: keytrail fetch trusts SSL_CERT_FILE.
	var reached atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		_, _ = io.WriteString(w, `{"error":"access_denied","error_description":"test"}`)
	}))
	defer srv.Close()
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte("eyJ0.eyJ0.sig\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := harness.KeytrailBinary(t)
	fetch := func(extraEnv ...string) {
		t.Helper()
		cmd := exec.Command(bin, "fetch", "--grant", "g", "--identity-token-file", tokFile, "--out", filepath.Join(dir, "out"), "--timeout", "2s")
		cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "KEYTRAIL_ADDR=" + srv.URL}, extraEnv...)
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("keytrail fetch succeeded against a server that refuses everything:\n%s", out)
		}
	}
	fetch() // the system roots: the handshake fails
	if n := reached.Load(); n != 0 {
		t.Fatalf("keytrail fetch reached a server with a private certificate without SSL_CERT_FILE (%d requests)", n)
	}
	fetch("SSL_CERT_FILE=" + caFile)
	if reached.Load() == 0 {
		t.Fatalf("keytrail fetch with SSL_CERT_FILE=%s did not reach the server: its CA was not trusted", caFile)
	}
}
