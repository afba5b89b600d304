package main

import (
	"strings"
	"testing"
)

// TestConfigRedisURLTheStoreRefuses: a store.redis_url (or
// KEYTRAIL_REDIS_URL) with a redis:// scheme that go-redis cannot read (a
// database that is not a number, an unescaped '/' or '@' in the password)
// passed the configuration's validation: 'keytrail config check' said ok,
// and the server failed only after logging in to Vault, with "store:
// redisstore: url: ..." naming neither the file nor the field. It is now a
// problem naming the field and the line (or the variable), without the
// password.
func TestConfigRedisURLTheStoreRefuses(t *testing.T) {
	pol := writeFile(t, t.TempDir(), "p.yaml", "version: 1\n")
	const base = "public_url: http://127.0.0.1:7700\naudit: {file: a.jsonl}\nvault: {address: http://127.0.0.1:8200}\npolicy: "
	for _, tt := range []struct {
		name    string
		url     string
		env     map[string]string
		wantErr string // "" ok
	}{
		// A password goes in the environment, never in the file
		// (TestConfigRedisURLPasswordNotInline).
		{name: "ok/db", url: "redis://redis:6379/0", env: map[string]string{"KEYTRAIL_REDIS_URL": "redis://:pw-S3CR3T@redis:6379/0"}},
		{name: "ok/no-db", url: "redis://redis:6379/0", env: map[string]string{"KEYTRAIL_REDIS_URL": "rediss://user:pw-S3CR3T@redis:6379"}},
		{name: "ok/escaped", url: "redis://redis:6379/0", env: map[string]string{"KEYTRAIL_REDIS_URL": "redis://:pw%2FS3CR3T@redis:6379/2"}},
		{name: "fail/db-not-a-number", url: "redis://:pw-S3CR3T@redis:6379/0x",
			wantErr: `store.redis_url: redis: invalid database number: "0x" (want redis://[user:password@]host:port/db or rediss://...) (line 5)`},
		{name: "fail/unescaped-slash", url: "redis://ops/S3CR3T@redis:6379/0",
			wantErr: "store.redis_url: '@' after the host: escape '/', '?', '#' and '@' in the user name and password (line 5)"},
		{name: "fail/unescaped-slash-in-password", url: "redis://:pw/S3CR3T@redis:6379/0",
			wantErr: "store.redis_url: cannot be parsed (want redis://[user:password@]host:port/db or rediss://...; escape special characters in the user name and password) (line 5)"},
		{name: "fail/from-env", url: "redis://redis:6379/0", env: map[string]string{"KEYTRAIL_REDIS_URL": "redis://:pw-S3CR3T@redis:6379/db1"},
			wantErr: `store.redis_url: redis: invalid database number: "db1" (want redis://[user:password@]host:port/db or rediss://...) (from KEYTRAIL_REDIS_URL)`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "config.yaml", base+pol+"\nstore: {redis_url: '"+tt.url+"'}\n")
			_, err := LoadConfig(p, func(k string) string { return tt.env[k] })
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("store.redis_url %q (env %v): %v, want ok", tt.url, tt.env, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("store.redis_url %q (env %v): %v, want an error containing %q", tt.url, tt.env, err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "S3CR3T") {
				t.Errorf("store.redis_url %q: the error shows the password: %v", tt.url, err)
			}
		})
	}
}
