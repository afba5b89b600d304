package main

import (
	"strings"
	"testing"
)

// TestConfigRedisURLPasswordNotInline: SPEC says secrets are referenced by
// file or environment, never inline in the configuration, but a
// store.redis_url written in the file with a password in it was accepted
// by config check and the server. It is now refused, naming the field and
// the line and saying where the password goes instead (KEYTRAIL_REDIS_URL,
// or store.addrs with KEYTRAIL_REDIS_PASSWORD), without the password. The
// same URL from KEYTRAIL_REDIS_URL, and a URL without a password (a user
// name is no secret), stay accepted.
func TestConfigRedisURLPasswordNotInline(t *testing.T) {
	pol := writeFile(t, t.TempDir(), "p.yaml", "version: 1\n")
	const base = "public_url: http://127.0.0.1:7700\naudit: {file: a.jsonl}\nvault: {address: http://127.0.0.1:8200}\npolicy: "
	const refused = "store.redis_url: holds a password inline; secrets are never written in the configuration: give the URL in KEYTRAIL_REDIS_URL instead (or store.addrs with KEYTRAIL_REDIS_PASSWORD) (line 5)"
	for _, tt := range []struct {
		name    string
		file    string // store.redis_url in the file ("": none)
		env     map[string]string
		wantErr string // "" ok
	}{
		{name: "fail/password", file: "redis://:pw-S3CR3T@redis:6379/0", wantErr: refused},
		{name: "fail/user-password-tls", file: "rediss://ops:pw-S3CR3T@redis:6379", wantErr: refused},
		{name: "fail/escaped-password", file: "redis://:pw%2FS3CR3T@redis:6379/2", wantErr: refused},
		{name: "ok/no-password", file: "redis://redis:6379/0"},
		{name: "ok/user-only", file: "redis://ops@redis:6379/0"},
		{name: "ok/from-env", file: "redis://redis:6379/0", env: map[string]string{"KEYTRAIL_REDIS_URL": "redis://:pw-S3CR3T@redis:6379/0"}},
		{name: "ok/env-overrides-file", file: "redis://:pw-S3CR3T@redis:6379/0", env: map[string]string{"KEYTRAIL_REDIS_URL": "redis://:pw-S3CR3T@redis:6379/1"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "config.yaml", base+pol+"\nstore: {redis_url: '"+tt.file+"'}\n")
			_, err := LoadConfig(p, func(k string) string { return tt.env[k] })
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("store.redis_url %q (env %v): %v, want ok", tt.file, tt.env, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("store.redis_url %q (env %v): %v, want an error containing %q", tt.file, tt.env, err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "S3CR3T") {
				t.Errorf("store.redis_url %q: the error shows the password: %v", tt.file, err)
			}
		})
	}
}
