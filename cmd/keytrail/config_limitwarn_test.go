package main

import (
	"bytes"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
)

// TestServerLogsLimitWarnings: a refusal_limit or introspect_limit
// per_second under one an hour drew no warning (a policy's rate does):
// keytrail server logs one per field at start, naming the file and the
// field, as config check prints it (TestConfigCheckReadsServerFiles).
func TestServerLogsLimitWarnings(t *testing.T) {
	dir := t.TempDir()
	pol := writeFile(t, dir, "policy.yaml", serverTestPolicy)
	cfgPath := writeFile(t, dir, "keytrail.yaml", "public_url: http://127.0.0.1:7700\npolicy: "+pol+
		"\nvault: {address: 'http://127.0.0.1:1'}\naudit: {file: "+filepath.Join(dir, "audit.jsonl")+"}\n"+
		"refusal_limit: {per_second: 0.0001, global_per_second: 1}\nintrospect_limit: {per_second: 0.0001}\n")
	cfg, err := LoadConfig(cfgPath, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	logConfigWarnings(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	for _, field := range []string{"refusal_limit.per_second", "introspect_limit.per_second"} {
		if want := `level=WARN msg="config warning" problem="` + cfgPath + ": " + field + `: 0.0001 is less than one request an hour (1/3600)`; !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs.String())
		}
	}
	if n := strings.Count(logs.String(), "config warning"); n != 2 {
		t.Errorf("%d config warnings, want 2 (global_per_second 1 is none):\n%s", n, logs.String())
	}
}

// TestServerLogsStartupTimeoutWarning: a startup_timeout under 30s (not
// 0, which is none) was accepted silently, and a start-up that needs
// longer is stopped at every start: keytrail server logs a warning naming
// the file and the field, as config check prints it.
func TestServerLogsStartupTimeoutWarning(t *testing.T) {
	dir := t.TempDir()
	pol := writeFile(t, dir, "policy.yaml", serverTestPolicy)
	for _, tc := range []struct {
		value string
		warn  bool
	}{{"1s", true}, {"29s", true}, {"30s", false}, {"0s", false}} {
		cfgPath := writeFile(t, dir, "keytrail.yaml", "public_url: http://127.0.0.1:7700\npolicy: "+pol+
			"\nvault: {address: 'http://127.0.0.1:1'}\naudit: {file: "+filepath.Join(dir, "audit.jsonl")+"}\n"+
			"startup_timeout: "+tc.value+"\n")
		cfg, err := LoadConfig(cfgPath, func(string) string { return "" })
		if err != nil {
			t.Fatal(err)
		}
		var logs bytes.Buffer
		logConfigWarnings(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
		want := `level=WARN msg="config warning" problem="` + cfgPath + ": startup_timeout: " + tc.value + " is less than 30s"
		if got := strings.Contains(logs.String(), want); got != tc.warn {
			t.Errorf("startup_timeout %s: warning %q logged: %v, want %v\n%s", tc.value, want, got, tc.warn, logs.String())
		}
	}
}
