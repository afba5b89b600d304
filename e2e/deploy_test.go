package e2e

// Deployment (issue #10): the Kubernetes manifests and the systemd unit in
// docs/deploy parse and say what they promise, their keytrail configuration
// decodes strictly against the server's Config type and their policies pass
// `keytrail policy check`; and a broker whose Vault token holds only the
// minimum policy (adapters/vault.MinimumBrokerPolicy) works end to end.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"maps"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"
	vaultapi "github.com/hashicorp/vault/api"
	"go.yaml.in/yaml/v3"

	vault "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/authn/authntest"
	"github.com/keytrail/keytrail/e2e/harness"
	"github.com/keytrail/keytrail/policies"
)

// deployManifest is one document of a Kubernetes manifest file.
type deployManifest struct {
	File string
	Kind string
	Name string
	Obj  map[string]any
}

func (m deployManifest) String() string { return m.File + ": " + m.Kind + "/" + m.Name }

// loadDeployManifests decodes every document of docs/deploy/kubernetes/*.yaml.
// Every document must have apiVersion, kind and metadata.name.
func loadDeployManifests(t *testing.T) []deployManifest {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(root, "docs", "deploy", "kubernetes", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in docs/deploy/kubernetes (%v)", err)
	}
	var out []deployManifest
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for i := 0; ; i++ {
			var obj map[string]any
			err := dec.Decode(&obj)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: document %d: %v", filepath.Base(f), i, err)
			}
			if obj == nil {
				continue // an empty document (comments only)
			}
			m := deployManifest{File: filepath.Base(f), Obj: obj}
			api, _ := obj["apiVersion"].(string)
			m.Kind, _ = obj["kind"].(string)
			m.Name, _ = deployDig(obj, "metadata", "name").(string)
			if api == "" || m.Kind == "" || m.Name == "" {
				t.Errorf("%s: document %d: apiVersion %q, kind %q, metadata.name %q: want all three", m.File, i, api, m.Kind, m.Name)
				continue
			}
			out = append(out, m)
		}
	}
	return out
}

// deployDig walks maps and lists ("0" indexes a list) and returns nil when a step
// is missing.
func deployDig(v any, keys ...string) any {
	for _, k := range keys {
		switch x := v.(type) {
		case map[string]any:
			v = x[k]
		case []any:
			var i int
			if _, err := fmt.Sscan(k, &i); err != nil || i < 0 || i >= len(x) {
				return nil
			}
			v = x[i]
		default:
			return nil
		}
	}
	return v
}

func deployList(v any) []any         { l, _ := v.([]any); return l }
func deployObj(v any) map[string]any { m, _ := v.(map[string]any); return m }

func deployFind(t *testing.T, ms []deployManifest, kind, name string) deployManifest {
	t.Helper()
	for _, m := range ms {
		if m.Kind == kind && m.Name == name {
			return m
		}
	}
	t.Fatalf("no %s/%s in docs/deploy/kubernetes", kind, name)
	return deployManifest{}
}

// deploySelects reports whether every label of sel is in labels.
func deploySelects(sel, labels map[string]any) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// deployBytes parses a size written as a number and one of units' suffixes
// (Redis's "768mb", Kubernetes's "1Gi").
func deployBytes(s string, units map[string]int64) (int64, error) {
	for u, m := range units {
		if n, ok := strings.CutSuffix(s, u); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			if err != nil || v <= 0 {
				return 0, fmt.Errorf("%q: not a positive number of %s", s, u)
			}
			return v * m, nil
		}
	}
	return 0, fmt.Errorf("%q: no unit of %v", s, slices.Sorted(maps.Keys(units)))
}

func TestDeployKubernetesManifests(t *testing.T) {
	ms := loadDeployManifests(t)
	clusterScoped := map[string]bool{"Namespace": true, "ClusterRole": true, "ClusterRoleBinding": true}
	for _, m := range ms {
		ns, _ := deployDig(m.Obj, "metadata", "namespace").(string)
		if !clusterScoped[m.Kind] && ns != "keytrail" {
			t.Errorf("%s: metadata.namespace = %q, want keytrail", m, ns)
		}
	}

	dep := deployFind(t, ms, "Deployment", "keytrail")
	pod := deployObj(deployDig(dep.Obj, "spec", "template", "spec"))
	podLabels := deployObj(deployDig(dep.Obj, "spec", "template", "metadata", "labels"))
	c := deployObj(deployDig(pod, "containers", "0"))
	mounts := map[string]map[string]any{} // volume name -> mount
	for _, vm := range deployList(c["volumeMounts"]) {
		mounts[deployObj(vm)["name"].(string)] = deployObj(vm)
	}
	volumes := map[string]map[string]any{}
	for _, v := range deployList(pod["volumes"]) {
		volumes[deployObj(v)["name"].(string)] = deployObj(v)
	}

	t.Run("ok/broker-deployment", func(t *testing.T) {
		got := map[string]any{
			"replicas":                 deployDig(dep.Obj, "spec", "replicas"),
			"pod.runAsNonRoot":         deployDig(pod, "securityContext", "runAsNonRoot"),
			"pod.runAsUser":            deployDig(pod, "securityContext", "runAsUser"),
			"readOnlyRootFilesystem":   deployDig(c, "securityContext", "readOnlyRootFilesystem"),
			"allowPrivilegeEscalation": deployDig(c, "securityContext", "allowPrivilegeEscalation"),
			"capabilities.drop":        deployDig(c, "securityContext", "capabilities", "drop"),
			"liveness":                 deployDig(c, "livenessProbe", "httpGet", "path"),
			"startup":                  deployDig(c, "startupProbe", "httpGet", "path"),
			"readiness":                deployDig(c, "readinessProbe", "httpGet", "path"),
			"automountToken":           pod["automountServiceAccountToken"],
			"serviceAccount":           pod["serviceAccountName"],
			"selector⊆labels":          deploySelects(deployObj(deployDig(dep.Obj, "spec", "selector", "matchLabels")), podLabels),
		}
		want := map[string]any{
			"replicas": 3, "pod.runAsNonRoot": true, "pod.runAsUser": 65532,
			"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false, "capabilities.drop": []any{"ALL"},
			"liveness": "/healthz", "startup": "/readyz", "readiness": "/readyz", "automountToken": false, "serviceAccount": "keytrail",
			"selector⊆labels": true,
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("Deployment keytrail (-want +got):\n%s", diff)
		}
		for _, r := range []string{"requests.cpu", "requests.memory", "limits.memory"} {
			if deployDig(c, append([]string{"resources"}, strings.Split(r, ".")...)...) == nil {
				t.Errorf("container keytrail has no resources.%s", r)
			}
		}
		deployFind(t, ms, "ServiceAccount", "keytrail")
		for name := range mounts {
			if volumes[name] == nil {
				t.Errorf("volumeMount %q has no volume", name)
			}
		}
		for name, v := range volumes {
			if mounts[name] == nil {
				t.Errorf("volume %q is not mounted", name)
			}
			if cm, _ := deployDig(v, "configMap", "name").(string); cm != "" && cm != "kube-root-ca.crt" && cm != "keytrail-vault-ca" {
				deployFind(t, ms, "ConfigMap", cm)
			}
		}
	})

	t.Run("ok/projected-vault-token", func(t *testing.T) {
		var found bool
		for name, v := range volumes {
			for _, src := range deployList(deployDig(v, "projected", "sources")) {
				if sat := deployObj(deployObj(src)["serviceAccountToken"]); sat != nil && sat["audience"] == "vault" {
					found = true
					if exp, _ := sat["expirationSeconds"].(int); exp < 600 || exp > 86400 {
						t.Errorf("projected token expirationSeconds = %v, want 600..86400", sat["expirationSeconds"])
					}
					if mounts[name] == nil || mounts[name]["readOnly"] != true {
						t.Errorf("projected token volume %q is not mounted read-only", name)
					}
				}
			}
		}
		if !found {
			t.Errorf("no projected serviceAccountToken volume with audience vault")
		}
	})

	// The static Vault token's Secret is optional: once vault.auth
	// (Kubernetes) replaces token_file, deleting the Secret must not leave
	// new pods stuck in ContainerCreating (a token_file still configured
	// whose file is absent fails the broker's start, naming it).
	t.Run("ok/vault-token-secret-optional", func(t *testing.T) {
		v := volumes["vault-token"]
		if v == nil {
			t.Fatal("no volume vault-token")
		}
		if name := deployDig(v, "secret", "secretName"); name != "keytrail-vault-token" {
			t.Errorf("volume vault-token secretName = %v, want keytrail-vault-token", name)
		}
		if opt := deployDig(v, "secret", "optional"); opt != true {
			t.Errorf("volume vault-token secret.optional = %v, want true", opt)
		}
	})

	t.Run("ok/service-and-pdb-select-the-broker", func(t *testing.T) {
		svc := deployFind(t, ms, "Service", "keytrail")
		if !deploySelects(deployObj(deployDig(svc.Obj, "spec", "selector")), podLabels) {
			t.Errorf("Service keytrail selector %v does not select the broker pods %v", deployDig(svc.Obj, "spec", "selector"), podLabels)
		}
		portNames := map[any]bool{}
		for _, p := range deployList(c["ports"]) {
			portNames[deployObj(p)["name"]] = true
			portNames[deployObj(p)["containerPort"]] = true
		}
		for _, p := range deployList(deployDig(svc.Obj, "spec", "ports")) {
			if !portNames[deployObj(p)["targetPort"]] {
				t.Errorf("Service keytrail targetPort %v is not a container port", deployObj(p)["targetPort"])
			}
		}
		pdb := deployFind(t, ms, "PodDisruptionBudget", "keytrail")
		if !deploySelects(deployObj(deployDig(pdb.Obj, "spec", "selector", "matchLabels")), podLabels) {
			t.Errorf("PodDisruptionBudget keytrail does not select the broker pods")
		}
	})

	t.Run("ok/redis-persistent-noeviction", func(t *testing.T) {
		sts := deployFind(t, ms, "StatefulSet", "keytrail-redis")
		var args []string
		for _, a := range deployList(deployDig(sts.Obj, "spec", "template", "spec", "containers", "0", "args")) {
			args = append(args, fmt.Sprint(a))
		}
		flag := func(name string) string {
			if i := slices.Index(args, name); i >= 0 && i+1 < len(args) {
				return args[i+1]
			}
			return ""
		}
		got := map[string]string{"--appendonly": flag("--appendonly"), "--maxmemory-policy": flag("--maxmemory-policy")}
		if diff := cmp.Diff(map[string]string{"--appendonly": "yes", "--maxmemory-policy": "noeviction"}, got); diff != "" {
			t.Errorf("redis args (-want +got):\n%s", diff)
		}
		// An AOF rewrite forks: every page the parent writes meanwhile is
		// copied, charged to the container's memory limit. maxmemory must
		// leave room for that (and fragmentation, buffers) under it.
		maxmem, err := deployBytes(flag("--maxmemory"), map[string]int64{"kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30})
		if err != nil {
			t.Fatalf("redis --maxmemory: %v", err)
		}
		limit, err := deployBytes(fmt.Sprint(deployDig(sts.Obj, "spec", "template", "spec", "containers", "0", "resources", "limits", "memory")),
			map[string]int64{"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30})
		if err != nil {
			t.Fatalf("redis limits.memory: %v", err)
		}
		if float64(maxmem) > 0.6*float64(limit) {
			t.Errorf("redis --maxmemory %s is %.0f %% of limits.memory: at most 60 %%, room for an AOF rewrite's copy-on-write", flag("--maxmemory"), 100*float64(maxmem)/float64(limit))
		}
		if deployDig(sts.Obj, "spec", "volumeClaimTemplates", "0", "metadata", "name") != "data" {
			t.Errorf("redis StatefulSet has no volumeClaimTemplate data")
		}
		deployFind(t, ms, "Service", "keytrail-redis")
	})

	cm := deployFind(t, ms, "ConfigMap", "keytrail-config")
	cfgText, _ := deployDig(cm.Obj, "data", "config.yaml").(string)

	t.Run("ok/config-decodes-strictly", func(t *testing.T) {
		cfg := checkServerConfig(t, cfgText)
		// --config names the mounted ConfigMap key.
		args := deployList(c["args"])
		i := slices.Index(args, any("--config"))
		if i < 0 || i+1 >= len(args) {
			t.Fatalf("container args %v lack --config FILE", args)
		}
		if vol, rel := deployMountOf(mounts, fmt.Sprint(args[i+1])); vol != "config" || rel != "config.yaml" {
			t.Errorf("--config %v is %s/%s, want the config.yaml key of the config volume", args[i+1], vol, rel)
		}
		// Every file the config names is on a read-only mount, the audit
		// log on a writable one, the policy directory is the policies
		// ConfigMap.
		for _, field := range []string{"vault.ca_file", "vault.token_file", "audit.checkpoint_key_file", "tls.cert_file", "tls.key_file"} {
			p, _ := deployDig(cfg, strings.Split(field, ".")...).(string)
			if p == "" {
				continue
			}
			vol, _ := deployMountOf(mounts, p)
			if vol == "" || mounts[vol]["readOnly"] != true {
				t.Errorf("%s %s is not on a read-only volume mount", field, p)
			}
		}
		if vol, rel := deployMountOf(mounts, fmt.Sprint(cfg["policy"])); vol != "policies" || rel != "" {
			t.Errorf("policy %v is %s/%s, want the policies volume's directory", cfg["policy"], vol, rel)
		}
		if vol, _ := deployMountOf(mounts, fmt.Sprint(deployDig(cfg, "audit", "file"))); vol == "" || mounts[vol]["readOnly"] == true {
			t.Errorf("audit.file %v is not on a writable volume mount", deployDig(cfg, "audit", "file"))
		}
	})

	// The drain must outlast what the readiness probe needs to see the pod
	// unready (failureThreshold failed probes, periodSeconds apart, the
	// first up to a period after the drain began), and the drain plus
	// shutdown_timeout, the cut-off grace and the close's bound must end
	// before the kubelet's SIGKILL.
	t.Run("ok/drain-outlasts-readiness-probe", func(t *testing.T) {
		cfg := checkServerConfig(t, cfgText)
		dur := func(field string) time.Duration {
			d, err := time.ParseDuration(fmt.Sprint(cfg[field]))
			if err != nil {
				t.Fatalf("config %s = %v: %v", field, cfg[field], err)
			}
			return d
		}
		secs := func(v any, what string) time.Duration {
			n, ok := v.(int)
			if !ok {
				t.Fatalf("%s = %v, want a number of seconds", what, v)
			}
			return time.Duration(n) * time.Second
		}
		drain, timeout := dur("shutdown_drain"), dur("shutdown_timeout")
		period := secs(deployDig(c, "readinessProbe", "periodSeconds"), "readinessProbe.periodSeconds")
		threshold, ok := deployDig(c, "readinessProbe", "failureThreshold").(int)
		if !ok {
			t.Fatalf("readinessProbe.failureThreshold = %v, want a number", deployDig(c, "readinessProbe", "failureThreshold"))
		}
		grace := secs(pod["terminationGracePeriodSeconds"], "terminationGracePeriodSeconds")
		if unready := time.Duration(threshold) * period; drain <= unready {
			t.Errorf("shutdown_drain %v <= readinessProbe failureThreshold x periodSeconds (%d x %v = %v): the pod still looks ready when the listener closes", drain, threshold, period, unready)
		}
		vaultTimeout := 5 * time.Second // vault.timeout's default
		if v := deployDig(cfg, "vault", "timeout"); v != nil {
			vaultTimeout = deployDuration(t, "vault.timeout", v)
		}
		cutOff := deployCutOffGrace(vaultTimeout)
		if drain+timeout+cutOff >= grace {
			t.Errorf("shutdown_drain + shutdown_timeout + the cut-off handlers' grace (%v + %v + %v) >= terminationGracePeriodSeconds (%v): the kubelet kills the broker before its shutdown ends", drain, timeout, cutOff, grace)
		}
		// A close that hangs then (a hung audit disk) is bounded by the
		// broker itself (harness.ShutdownCloseBound, 52 s by default):
		// an ERROR naming the step it waits for, exit 1. A SIGKILL
		// before that loses the ERROR.
		if closeBound := harness.ShutdownCloseBound(vaultTimeout); drain+timeout+cutOff+closeBound >= grace {
			t.Errorf("shutdown_drain + shutdown_timeout + the cut-off handlers' grace + the close's bound (%v + %v + %v + %v) >= terminationGracePeriodSeconds (%v): the kubelet kills a broker whose close hangs before it logs the step it waits for", drain, timeout, cutOff, closeBound, grace)
		}
	})

	// A start-up that never ends is stopped by the broker itself
	// (startup_timeout: an ERROR naming what it waited for, exit 1) before
	// the startup probe's window (failureThreshold x periodSeconds) ends,
	// which restarts the pod without a word; the probe is the back-stop,
	// also for startup_timeout: 0.
	t.Run("ok/startup-timeout-within-startup-probe", func(t *testing.T) {
		cfg := checkServerConfig(t, cfgText)
		startup := 5 * time.Minute // startup_timeout's default
		if v := deployDig(cfg, "startup_timeout"); v != nil {
			startup = deployDuration(t, "startup_timeout", v)
		}
		period, ok1 := deployDig(c, "startupProbe", "periodSeconds").(int)
		threshold, ok2 := deployDig(c, "startupProbe", "failureThreshold").(int)
		if !ok1 || !ok2 {
			t.Fatalf("startupProbe periodSeconds %v, failureThreshold %v: want numbers", deployDig(c, "startupProbe", "periodSeconds"), deployDig(c, "startupProbe", "failureThreshold"))
		}
		if window := time.Duration(threshold*period) * time.Second; startup <= 0 || startup >= window {
			t.Errorf("startup_timeout %v is not below the startup probe's %d x %ds = %v: the kubelet restarts a stuck start-up before the broker says what it waited for", startup, threshold, period, window)
		}
	})

	// GOMEMLIMIT is a soft limit on the Go runtime's own memory; the
	// container's limits.memory is the kernel's hard one, which also
	// counts what the runtime does not (the memory-backed emptyDirs, kernel
	// buffers). With GOGC=400 the heap grows towards GOMEMLIMIT before the
	// GC works hard: set to limits.memory itself, the pod is OOM-killed
	// before the GC holds it back. The Go GC guide advises 5-10 % headroom.
	t.Run("ok/gomemlimit-below-memory-limit", func(t *testing.T) {
		limit, err := deployK8sBytes(fmt.Sprint(deployDig(c, "resources", "limits", "memory")))
		if err != nil {
			t.Fatalf("resources.limits.memory: %v", err)
		}
		var tmpfs int64 // memory-backed emptyDirs count against limits.memory
		for name, v := range volumes {
			if deployDig(v, "emptyDir", "medium") == "Memory" {
				n, err := deployK8sBytes(fmt.Sprint(deployDig(v, "emptyDir", "sizeLimit")))
				if err != nil {
					t.Fatalf("volume %s: memory-backed emptyDir without a sizeLimit: %v", name, err)
				}
				tmpfs += n
			}
		}
		var gomem map[string]any
		for _, e := range deployList(c["env"]) {
			if deployObj(e)["name"] == "GOMEMLIMIT" {
				gomem = deployObj(e)
			}
		}
		if gomem == nil {
			t.Fatal("container keytrail sets no GOMEMLIMIT")
		}
		val, ok := gomem["value"].(string)
		if !ok {
			t.Fatalf("GOMEMLIMIT = %v, want a value below limits.memory (%d bytes): the limit itself (resourceFieldRef limits.memory) leaves the GC no headroom before the OOM killer", gomem, limit)
		}
		n, err := deployGoMemLimit(val)
		if err != nil {
			t.Fatalf("GOMEMLIMIT %q: %v", val, err)
		}
		if room := limit*95/100 - tmpfs; n > room || n < limit/2 {
			t.Errorf("GOMEMLIMIT %q = %d bytes, want between half of limits.memory (%d) and 95 %% of it less the memory-backed emptyDirs (%d)", val, n, limit/2, room)
		}
	})

	t.Run("ok/policies-pass-policy-check", func(t *testing.T) {
		pcm := deployFind(t, ms, "ConfigMap", "keytrail-policies")
		dir := t.TempDir()
		n := 0
		for k, v := range deployObj(deployDig(pcm.Obj, "data")) {
			if err := os.WriteFile(filepath.Join(dir, k), []byte(fmt.Sprint(v)), 0o600); err != nil {
				t.Fatal(err)
			}
			n++
		}
		if n == 0 {
			t.Fatal("ConfigMap keytrail-policies has no data")
		}
		out, err := exec.Command(harness.KeytrailBinary(t), "policy", "check", dir).CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "ok:") {
			t.Errorf("keytrail policy check = %v\n%s", err, out)
		}
	})
}

// deployK8sBytes parses a Kubernetes memory quantity: an integer with an
// optional binary (Ki, Mi, Gi, Ti) or decimal (k, M, G, T) suffix.
func deployK8sBytes(q string) (int64, error) {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40}, {"k", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}, {"", 1}} {
		if num, ok := strings.CutSuffix(q, u.suffix); ok {
			n, err := strconv.ParseInt(num, 10, 64)
			if err != nil || n <= 0 {
				return 0, fmt.Errorf("%q is not a memory quantity", q)
			}
			return n * u.mult, nil
		}
	}
	return 0, fmt.Errorf("%q is not a memory quantity", q)
}

// deployGoMemLimit parses GOMEMLIMIT as the Go runtime does: an integer
// with an optional B, KiB, MiB, GiB or TiB suffix.
func deployGoMemLimit(v string) (int64, error) {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"B", 1}, {"", 1}} {
		if num, ok := strings.CutSuffix(v, u.suffix); ok {
			n, err := strconv.ParseInt(num, 10, 64)
			if err != nil || n <= 0 {
				return 0, fmt.Errorf("not a GOMEMLIMIT value (an integer with an optional B, KiB, MiB, GiB or TiB suffix)")
			}
			return n * u.mult, nil
		}
	}
	return 0, fmt.Errorf("not a GOMEMLIMIT value")
}

// deployMountOf returns the volume whose mount path contains p, and p relative to
// it ("" when p is the mount path itself).
func deployMountOf(mounts map[string]map[string]any, p string) (vol, rel string) {
	best := ""
	for name, m := range mounts {
		mp, _ := m["mountPath"].(string)
		if (p == mp || strings.HasPrefix(p, mp+"/")) && len(mp) > len(best) {
			best, vol = mp, name
			rel = strings.TrimPrefix(strings.TrimPrefix(p, mp), "/")
		}
	}
	return vol, rel
}

// deployConfigSchema maps each struct type of cmd/keytrail to its fields by YAML
// name, read from the package's source, so this check follows config.go
// without importing package main.
type deployConfigSchema map[string]map[string]ast.Expr

func loadDeployConfigSchema(t *testing.T) deployConfigSchema {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(root, "cmd", "keytrail", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	s := deployConfigSchema{}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(af, func(n ast.Node) bool {
			ts, ok := n.(*ast.TypeSpec)
			if !ok {
				return true
			}
			st, ok := ts.Type.(*ast.StructType)
			if !ok {
				return true
			}
			fields := map[string]ast.Expr{}
			for _, fl := range st.Fields.List {
				if fl.Tag == nil {
					continue
				}
				tag := reflect.StructTag(strings.Trim(fl.Tag.Value, "`")).Get("yaml")
				name, _, _ := strings.Cut(tag, ",")
				if name != "" && name != "-" {
					fields[name] = fl.Type
				}
			}
			if len(fields) > 0 {
				s[ts.Name.Name] = fields
			}
			return true
		})
	}
	if s["Config"] == nil {
		t.Fatal("cmd/keytrail has no Config struct with yaml tags")
	}
	return s
}

// check reports every key of n that the Go type typ would reject under
// strict decoding, and scalars of the wrong kind.
func (s deployConfigSchema) check(n *yaml.Node, typ ast.Expr, at string, errs *[]string) {
	bad := func(format string, args ...any) { *errs = append(*errs, at+": "+fmt.Sprintf(format, args...)) }
	switch x := typ.(type) {
	case *ast.StarExpr:
		s.check(n, x.X, at, errs)
	case *ast.ArrayType:
		if n.Kind != yaml.SequenceNode {
			bad("want a list")
			return
		}
		for i, item := range n.Content {
			s.check(item, x.Elt, fmt.Sprintf("%s[%d]", at, i), errs)
		}
	case *ast.MapType:
		if n.Kind != yaml.MappingNode {
			bad("want a mapping")
		}
	case *ast.Ident:
		if fields, ok := s[x.Name]; ok {
			if n.Kind != yaml.MappingNode {
				bad("want a mapping")
				return
			}
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i].Value
				ft, ok := fields[k]
				if !ok {
					*errs = append(*errs, fmt.Sprintf("%s: line %d: field %s not found in type %s", strings.TrimPrefix(at+"."+k, "."), n.Content[i].Line, k, x.Name))
					continue
				}
				s.check(n.Content[i+1], ft, strings.TrimPrefix(at+"."+k, "."), errs)
			}
			return
		}
		if n.Kind != yaml.ScalarNode {
			bad("want a scalar")
			return
		}
		switch x.Name {
		case "string":
			if n.Tag != "!!str" {
				bad("%q is not a string", n.Value)
			}
		case "bool":
			if n.Tag != "!!bool" {
				bad("%q is not a bool", n.Value)
			}
		case "int", "int64", "uint64":
			if n.Tag != "!!int" {
				bad("%q is not an integer", n.Value)
			}
		case "duration":
			if _, err := time.ParseDuration(n.Value); err != nil {
				bad("%q is not a duration", n.Value)
			}
		}
	}
}

// checkServerConfig fails t with every problem validateServerConfig finds
// and returns the decoded config.
func checkServerConfig(t *testing.T, text string) map[string]any {
	t.Helper()
	cfg, errs := validateServerConfig(loadDeployConfigSchema(t), text)
	for _, e := range errs {
		t.Errorf("server config: %s", e)
	}
	return cfg
}

// validateServerConfig checks text like LoadConfig would, short of the
// files: strict decoding against Config, the required fields, and the
// plain-HTTP rule.
func validateServerConfig(schema deployConfigSchema, text string) (map[string]any, []string) {
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(text), &doc); err != nil {
		return nil, []string{err.Error()}
	}
	if len(doc.Content) == 0 {
		return nil, []string{"empty"}
	}
	var errs []string
	schema.check(doc.Content[0], ast.NewIdent("Config"), "", &errs)
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(text), &cfg); err != nil {
		return nil, append(errs, err.Error())
	}
	for _, f := range []string{"public_url", "policy", "vault.address", "audit.file"} {
		if v, _ := deployDig(cfg, strings.Split(f, ".")...).(string); v == "" {
			errs = append(errs, f+": required")
		}
	}
	if listen, _ := cfg["listen"].(string); listen != "" {
		host, _, err := net.SplitHostPort(listen)
		ip := net.ParseIP(host)
		loopback := host == "localhost" || (ip != nil && ip.IsLoopback())
		if err != nil {
			errs = append(errs, "listen: must be host:port")
		} else if !loopback && cfg["tls"] == nil && cfg["allow_plain_http"] != true {
			errs = append(errs, "listen: plain HTTP on a non-loopback address needs tls or allow_plain_http")
		}
	}
	return cfg, errs
}

// TestDeployConfigChecker makes sure the config checks above can fail.
func TestDeployConfigChecker(t *testing.T) {
	const base = "public_url: https://k\npolicy: /p\naudit: {file: /a}\n"
	tests := []struct {
		name string
		text string
		want []string
	}{
		{"ok/minimal", base + "vault: {address: https://v}\n", nil},
		{"ok/tls-non-loopback", base + "vault: {address: https://v}\nlisten: 0.0.0.0:7700\ntls: {cert_file: /c, key_file: /k}\n", nil},
		{"fail/unknown-top-level", base + "vault: {address: https://v}\nlistenn: x\n",
			[]string{"listenn: line 5: field listenn not found in type Config"}},
		{"ok/spec-approle", base + "vault: {address: https://v, approle: {role_id_file: /r, secret_id_file: /s}}\n", nil},
		{"fail/unknown-nested", base + "vault: {address: https://v, approle: {role_id: r}}\n",
			[]string{"vault.approle.role_id: line 4: field role_id not found in type AppRoleConfig"}},
		{"fail/bad-duration", base + "vault: {address: https://v, timeout: 5}\n",
			[]string{`vault.timeout: "5" is not a duration`}},
		{"fail/not-a-bool", base + "vault: {address: https://v}\nallow_plain_http: maybe\n",
			[]string{`allow_plain_http: "maybe" is not a bool`}},
		{"fail/plain-http-non-loopback", base + "vault: {address: https://v}\nlisten: 0.0.0.0:7700\n",
			[]string{"listen: plain HTTP on a non-loopback address needs tls or allow_plain_http"}},
		{"fail/missing-required", "policy: /p\n", []string{"public_url: required", "vault.address: required", "audit.file: required"}},
	}
	schema := loadDeployConfigSchema(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, got := validateServerConfig(schema, tt.text)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("validateServerConfig(%s) (-want +got):\n%s", tt.name, diff)
			}
		})
	}
}

// deployUnit is a parsed systemd unit: section -> directive -> values in order.
type deployUnit map[string]map[string][]string

func parseDeployUnit(t *testing.T, data []byte) deployUnit {
	t.Helper()
	u := deployUnit{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";"):
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			section = l[1 : len(l)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok || section == "" || strings.TrimSpace(k) == "" || strings.HasSuffix(l, "\\") {
				t.Errorf("keytrail.service line %d: %q is not Key=Value in a section", line, l)
				continue
			}
			k = strings.TrimSpace(k)
			u[section][k] = append(u[section][k], strings.TrimSpace(v))
		}
	}
	return u
}

func TestDeploySystemdUnit(t *testing.T) {
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "docs", "deploy", "systemd", "keytrail.service"))
	if err != nil {
		t.Fatal(err)
	}
	u := parseDeployUnit(t, data)
	last := func(section, key string) string {
		v := u[section][key]
		if len(v) == 0 {
			return ""
		}
		return v[len(v)-1]
	}
	got := map[string]string{
		"ExecStart":             last("Service", "ExecStart"),
		"ExecReload":            last("Service", "ExecReload"),
		"NoNewPrivileges":       last("Service", "NoNewPrivileges"),
		"ProtectSystem":         last("Service", "ProtectSystem"),
		"ReadWritePaths":        last("Service", "ReadWritePaths"),
		"PrivateTmp":            last("Service", "PrivateTmp"),
		"ProtectHome":           last("Service", "ProtectHome"),
		"CapabilityBoundingSet": strings.Join(u["Service"]["CapabilityBoundingSet"], "|"),
		"non-root":              fmt.Sprint(last("Service", "DynamicUser") == "yes" || (last("Service", "User") != "" && last("Service", "User") != "root")),
		"WantedBy":              last("Install", "WantedBy"),
	}
	want := map[string]string{
		"ExecStart":             "/usr/local/bin/keytrail server --config /etc/keytrail/config.yaml",
		"ExecReload":            "/bin/kill -HUP $MAINPID",
		"NoNewPrivileges":       "yes",
		"ProtectSystem":         "strict",
		"ReadWritePaths":        "/var/lib/keytrail",
		"PrivateTmp":            "yes",
		"ProtectHome":           "yes",
		"CapabilityBoundingSet": "",
		"non-root":              "true",
		"WantedBy":              "multi-user.target",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("keytrail.service (-want +got):\n%s", diff)
	}

	// The config the deployUnit runs with: strict, and every credential path is
	// one of the deployUnit's LoadCredential names.
	cfgData, err := os.ReadFile(filepath.Join(root, "docs", "deploy", "systemd", "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := checkServerConfig(t, string(cfgData))
	creds := map[string]bool{}
	for _, lc := range u["Service"]["LoadCredential"] {
		name, _, _ := strings.Cut(lc, ":")
		creds["/run/credentials/keytrail.service/"+name] = true
	}
	for _, field := range []string{"vault.token_file", "audit.checkpoint_key_file", "tls.cert_file", "tls.key_file"} {
		p, _ := deployDig(cfg, strings.Split(field, ".")...).(string)
		if strings.HasPrefix(p, "/run/credentials/") && !creds[p] {
			t.Errorf("config %s %s is not a LoadCredential= of the deployUnit", field, p)
		}
	}
	if a, _ := deployDig(cfg, "audit", "file").(string); path.Dir(a) != got["ReadWritePaths"] {
		t.Errorf("audit.file %s is not in ReadWritePaths %s", a, got["ReadWritePaths"])
	}

	// systemd SIGKILLs the broker TimeoutStopSec after its SIGTERM: the
	// drain, shutdown_timeout and the grace of the handlers cut off then
	// must end before (a kill loses the audit log's final checkpoint).
	stop := deployDuration(t, "TimeoutStopSec", last("Service", "TimeoutStopSec"))
	drain, timeout := time.Duration(0), 20*time.Second // the defaults
	if v := deployDig(cfg, "shutdown_drain"); v != nil {
		drain = deployDuration(t, "shutdown_drain", v)
	}
	if v := deployDig(cfg, "shutdown_timeout"); v != nil {
		timeout = deployDuration(t, "shutdown_timeout", v)
	}
	vaultTimeout := 5 * time.Second
	if v := deployDig(cfg, "vault", "timeout"); v != nil {
		vaultTimeout = deployDuration(t, "vault.timeout", v)
	}
	cutOff := deployCutOffGrace(vaultTimeout)
	if drain+timeout+cutOff >= stop {
		t.Errorf("shutdown_drain + shutdown_timeout + the cut-off handlers' grace (%v + %v + %v) >= TimeoutStopSec (%v): systemd kills the broker before its shutdown ends", drain, timeout, cutOff, stop)
	}
	// A close that hangs then (a hung audit disk) ends with an ERROR
	// naming the step it waits for, exit 1, harness.ShutdownCloseBound
	// later (52 s by default): a SIGKILL before that loses the ERROR.
	if closeBound := harness.ShutdownCloseBound(vaultTimeout); drain+timeout+cutOff+closeBound >= stop {
		t.Errorf("shutdown_drain + shutdown_timeout + the cut-off handlers' grace + the close's bound (%v + %v + %v + %v) >= TimeoutStopSec (%v): systemd kills a broker whose close hangs before it logs the step it waits for", drain, timeout, cutOff, closeBound, stop)
	}
}

// TestMinimumVaultPolicy runs a broker whose Vault token holds only
// vault.MinimumBrokerPolicy of its policy plus the policies its grants hand
// out (vault.HeldPolicies: the grants' policies and "default", which Vault
// passes on to a minted token only when the parent holds it), and exchanges
// a vault_token and a jwt grant and revokes an issuance through it. With
// vault.token_role the broker mints through an orphan token role whose
// allowed_policies bound what it hands out, and holds none of them itself.
func TestMinimumVaultPolicy(t *testing.T) {
	t.Run("create-orphan", func(t *testing.T) { testMinimumVaultPolicy(t, "") })
	t.Run("token-role", func(t *testing.T) { testMinimumVaultPolicy(t, "keytrail-workloads") })
}

func testMinimumVaultPolicy(t *testing.T, tokenRole string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	v := harness.StartVault(t)
	root := v.Client

	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(iss.Handler())
	t.Cleanup(srv.Close)
	iss.URL = srv.URL
	s := &stack{vault: v, issuer: &testIssuer{Issuer: iss, url: srv.URL}, dir: t.TempDir()}

	polDir := filepath.Join(s.dir, "policies")
	if err := os.MkdirAll(polDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(polDir, "base.yaml"), []byte(fmt.Sprintf(e2ePolicy, srv.URL)), 0o600); err != nil {
		t.Fatal(err)
	}
	pol, err := policies.Load(polDir)
	if err != nil {
		t.Fatal(err)
	}
	po := vault.BrokerPolicyOptions{TokenRole: tokenRole}
	hcl, err := vault.MinimumBrokerPolicy(pol, po)
	if err != nil {
		t.Fatal(err)
	}
	held := vault.HeldPolicies(pol, po)
	wantHeld := []string{"default", "deploy", "payments-read"}
	if tokenRole != "" {
		wantHeld = nil
		if _, err := root.Logical().WriteWithContext(ctx, "auth/token/roles/"+tokenRole, map[string]any{
			"allowed_policies": []string{"deploy", "payments-read"}, "orphan": true, "renewable": false,
		}); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff(wantHeld, held); diff != "" {
		t.Errorf("HeldPolicies (-want +got):\n%s", diff)
	}
	for name, rules := range map[string]string{
		"keytrail-broker": hcl,
		"payments-read":   `path "secret/data/payments/*" { capabilities = ["read"] }`,
		"deploy":          `path "secret/data/deploy/*" { capabilities = ["read"] }`,
	} {
		if err := root.Sys().PutPolicyWithContext(ctx, name, rules); err != nil {
			t.Fatalf("put policy %s: %v\n%s", name, err, rules)
		}
	}
	bt, err := root.Auth().Token().CreateWithContext(ctx, &vaultapi.TokenCreateRequest{
		Policies: append([]string{"keytrail-broker"}, held...), TTL: "1h",
	})
	if err != nil {
		t.Fatal(err)
	}
	brokerToken := bt.Auth.ClientToken
	wantPolicies := []string{"default", "deploy", "keytrail-broker", "payments-read"}
	if tokenRole != "" {
		wantPolicies = []string{"default", "keytrail-broker"} // Vault adds default
	}
	if diff := cmp.Diff(wantPolicies, bt.Auth.Policies); diff != "" {
		t.Fatalf("broker token policies (-want +got):\n%s", diff)
	}

	port := harness.FreePort(t)
	s.brokerURL = fmt.Sprintf("http://127.0.0.1:%d", port)
	s.auditPath = filepath.Join(s.dir, "audit.jsonl")
	cfg := fmt.Sprintf("listen: 127.0.0.1:%d\npublic_url: %s\npolicy: %s\nvault:\n  address: %s\n  token_role: %q\naudit:\n  file: %s\nlog: {level: debug}\n",
		port, s.brokerURL, polDir, v.Addr, tokenRole, s.auditPath)
	cfgPath := filepath.Join(s.dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if tokenRole != "" {
		// While the role does not make orphans (which would tie every
		// minted token to the broker's own), the broker refuses to start.
		setOrphan := func(orphan bool) {
			t.Helper()
			if _, err := root.Logical().WriteWithContext(ctx, "auth/token/roles/"+tokenRole, map[string]any{
				"allowed_policies": []string{"deploy", "payments-read"}, "orphan": orphan, "renewable": false,
			}); err != nil {
				t.Fatal(err)
			}
		}
		setOrphan(false)
		cmd := exec.CommandContext(ctx, harness.KeytrailBinary(t), "server", "--config", cfgPath)
		cmd.Env = append(os.Environ(), "VAULT_TOKEN="+brokerToken, "KEYTRAIL_RECONCILE=off")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "vault.token_role") || !strings.Contains(string(out), "orphan=true") {
			t.Errorf("keytrail server with a non-orphan token role: err %v, output:\n%s\nwant a failed start naming vault.token_role and orphan=true", err, out)
		}
		setOrphan(true)
	}
	// Reconciliation lists every token accessor, which needs sudo: not part
	// of the minimum (BrokerPolicyOptions.Reconcile), so it is off here.
	s.broker = harness.StartKeytrail(t, s.brokerURL, cfgPath, "VAULT_TOKEN="+brokerToken, "KEYTRAIL_RECONCILE=off")

	workload := func(session string) string {
		return s.issuer.token(t, "system:serviceaccount:payments:api", map[string]any{"namespace": "payments", "session": session})
	}
	minted := func(tok string) error {
		c, err := root.Clone()
		if err != nil {
			t.Fatal(err)
		}
		c.SetToken(tok)
		_, err = c.Auth().Token().LookupSelfWithContext(ctx)
		return err
	}

	var vaultIss tokenResponse
	t.Run("ok/vault-token", func(t *testing.T) {
		vaultIss = s.issue(t, workload("pod-1"), "payments-vault", nil)
		if err := minted(vaultIss.AccessToken); err != nil {
			t.Errorf("lookup-self with the minted token = %v", err)
		}
		// An orphan with the grant's policy, whichever way it was made,
		// so it outlives the broker's own token.
		look, err := root.Logical().WriteWithContext(ctx, "auth/token/lookup-accessor", map[string]any{"accessor": vaultIss.Credential["accessor"]})
		if err != nil {
			t.Fatal(err)
		}
		orphan, _ := look.Data["orphan"].(bool)
		pols, _ := look.Data["policies"].([]any)
		role, _ := look.Data["role"].(string)
		if !orphan || !slices.Contains(pols, any("payments-read")) || role != tokenRole {
			t.Errorf("minted token: orphan %v, policies %v, role %q; want an orphan with payments-read made through role %q", orphan, pols, role, tokenRole)
		}
	})

	t.Run("ok/jwt", func(t *testing.T) {
		res := s.issue(t, workload("pod-2"), "orders-jwt", nil)
		kf, err := keyfunc.NewDefaultCtx(ctx, []string{s.brokerURL + "/.well-known/jwks.json"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := jwt.Parse(res.AccessToken, kf.Keyfunc, jwt.WithValidMethods([]string{"ES256", "EdDSA"}),
			jwt.WithIssuer(s.brokerURL), jwt.WithAudience("orders-api"), jwt.WithExpirationRequired()); err != nil {
			t.Errorf("minted JWT does not verify against the broker's JWKS: %v", err)
		}
	})

	t.Run("ok/revoke", func(t *testing.T) {
		if vaultIss.IssuanceID == "" {
			t.Fatal("no vault_token issuance to revoke")
		}
		admin := s.issuer.token(t, "alice", map[string]any{"groups": "secops"})
		body := fmt.Sprintf(`{"issuance_id": %q, "reason": "e2e: minimum Vault policy"}`, vaultIss.IssuanceID)
		status, raw := call(t, "POST", s.brokerURL+"/v1/admin/revoke", admin, "application/json", strings.NewReader(body))
		var rc receiptJSON
		if status != 200 || json.Unmarshal(raw, &rc) != nil {
			t.Fatalf("POST /v1/admin/revoke = %d %s\n--- broker log ---\n%s", status, raw, s.broker.Logs())
		}
		got := map[string]any{"matched": rc.Matched, "revoked": rc.Revoked, "pending": len(rc.Pending), "failed": len(rc.Failed)}
		want := map[string]any{"matched": 1, "revoked": []string{vaultIss.IssuanceID}, "pending": 0, "failed": 0}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("revocation receipt (-want +got):\n%s", diff)
		}
		if err := minted(vaultIss.AccessToken); err == nil {
			t.Errorf("the revoked token still works in Vault")
		}
	})

	t.Run("ok/no-permission-denied", func(t *testing.T) {
		for _, line := range strings.Split(s.broker.Logs(), "\n") {
			if strings.Contains(line, "reconcil") {
				continue // optional, needs sudo; see above
			}
			if strings.Contains(line, "permission denied") || strings.Contains(line, "vault_denied") {
				t.Errorf("broker log shows a Vault permission problem: %s", line)
			}
		}
	})
}

// deployCutOffGrace is keytrail server's wait, after shutdown_timeout,
// for the handlers it cut off (the server's own formula,
// broker.TimeoutsFor(vault.timeout).CutOffGrace: twice the mint timeout,
// the longer of 5 s and vault.timeout, at most 60 s, plus 2 s for a store
// write and 3 x 10 s for audit events). A supervisor's stop timeout must
// leave room for it too.
func deployCutOffGrace(vaultTimeout time.Duration) time.Duration {
	return broker.TimeoutsFor(vaultTimeout).CutOffGrace()
}

// deployDuration parses a duration v of the config or unit (field names it).
func deployDuration(t *testing.T, field string, v any) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(fmt.Sprint(v))
	if err != nil {
		t.Fatalf("config %s = %v: %v", field, v, err)
	}
	return d
}
