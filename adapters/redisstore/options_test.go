package redisstore

import (
	"net/url"
	"strings"
	"testing"
)

var hashTagCases = []struct {
	name   string
	prefix string
	want   bool
}{
	{"ok/default", DefaultPrefix, true},
	{"ok/tag-in-middle", "kt{prod}:", true},
	{"ok/first-tag-counts", "{a}{}:", true},
	{"fail/no-braces", "keytrail:", false},
	{"fail/empty-tag", "{}keytrail:", false},
	{"fail/unclosed", "{keytrail:", false},
	{"fail/close-before-open", "}keytrail{:", false},
	{"fail/empty", "", false},
}

func TestHasHashTag(t *testing.T) {
	for _, c := range hashTagCases {
		t.Run(c.name, func(t *testing.T) {
			if got := hasHashTag(c.prefix); got != c.want {
				t.Errorf("hasHashTag(%q) = %v, want %v", c.prefix, got, c.want)
			}
		})
	}
}

// FuzzHasHashTag checks that a prefix with a hash tag keeps it whatever key
// follows: Redis Cluster hashes by the first tag, which is the prefix's.
func FuzzHasHashTag(f *testing.F) {
	for _, c := range hashTagCases {
		f.Add(c.prefix, "iss:x")
	}
	f.Fuzz(func(t *testing.T, prefix, rest string) {
		if hasHashTag(prefix) && !hasHashTag(prefix+rest) {
			t.Errorf("hasHashTag(%q) = true but hasHashTag(%q) = false", prefix, prefix+rest)
		}
	})
}

const (
	secretMarker = "zq9xSECRET"
	userMarker   = "zq9xUSER"
)

var urlCases = []struct {
	name    string
	url     string
	wantErr bool
}{
	{"ok/plain", "redis://127.0.0.1:6379/0", false},
	{"ok/password", "redis://:" + secretMarker + "@127.0.0.1:6379/0", false},
	{"ok/tls", "rediss://user:" + secretMarker + "@redis.example:6380/1", false},
	{"fail/bad-port", "redis://user:" + secretMarker + "@127.0.0.1:notaport/0", true},
	{"fail/bad-host", "redis://:" + secretMarker + "@[::1/0", true},
	{"fail/bad-db", "redis://user:" + secretMarker + "@127.0.0.1:6379/notadb", true},
	{"fail/bad-option", "redis://:" + secretMarker + "@127.0.0.1:6379/0?dial_timeout=forever", true},
	{"fail/unix", "unix://user:" + secretMarker + "@/tmp/redis.sock", true},
	{"fail/http", "http://user:" + secretMarker + "@127.0.0.1", true},
	{"fail/control-char", "redis://:" + secretMarker + "\x7f@127.0.0.1", true},
	// An unescaped '/', '?' or '#' in the user info ends the authority
	// early: what follows, user info included, was quoted as the path,
	// the database number or an option, or dialed as the host.
	{"fail/slash-in-user", "redis://" + userMarker + "/ci:" + secretMarker + "@127.0.0.1:6379/0", true},
	{"fail/slash-in-user-no-password", "redis://ci/" + userMarker + "@127.0.0.1:6379", true},
	{"fail/query-in-user", "redis://" + userMarker + "?ci:" + secretMarker + "@127.0.0.1:6379/0", true},
	{"fail/fragment-in-user", "redis://" + userMarker + "#ci:" + secretMarker + "@127.0.0.1:6379/0", true},
}

func TestNewClientURL(t *testing.T) {
	for _, c := range urlCases {
		t.Run(c.name, func(t *testing.T) {
			cl, err := newClient(Options{URL: c.url})
			if cl != nil {
				_ = cl.Close()
			}
			if gotErr := err != nil; gotErr != c.wantErr {
				t.Fatalf("newClient(%q) = %v, want error=%v", c.url, err, c.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), secretMarker) {
				t.Errorf("newClient(%q) = %q, leaks the password", c.url, err)
			}
			if err != nil && strings.Contains(err.Error(), userMarker) {
				t.Errorf("newClient(%q) = %q, leaks the user name", c.url, err)
			}
		})
	}
}

// FuzzNewClientURL checks that no URL error repeats the URL's password:
// nothing of an unparsable URL, and not the password of a parsable one.
func FuzzNewClientURL(f *testing.F) {
	for _, c := range urlCases {
		before, after, _ := strings.Cut(c.url, secretMarker)
		f.Add(before, after)
	}
	f.Fuzz(func(t *testing.T, before, after string) {
		u := before + secretMarker + after
		cl, err := newClient(Options{URL: u})
		if cl != nil {
			_ = cl.Close()
		}
		if err == nil {
			return
		}
		pu, perr := url.Parse(u)
		if perr != nil {
			if strings.Contains(err.Error(), secretMarker) {
				t.Errorf("newClient(%q) = %q, repeats an unparsable URL", u, err)
			}
			return
		}
		if pw, ok := pu.User.Password(); ok && strings.Contains(pw, secretMarker) && strings.Contains(err.Error(), pw) {
			t.Errorf("newClient(%q) = %q, leaks the password", u, err)
		}
	})
}

func TestNewClientURLUnescapedSlashInPassword(t *testing.T) {
	// "pa/ss" ends the authority early, so url.Parse sees ":pa" as a port.
	u := "redis://user:" + secretMarker + "/ss@127.0.0.1:6379/0"
	_, err := newClient(Options{URL: u})
	if err == nil || strings.Contains(err.Error(), secretMarker) {
		t.Errorf("newClient(%q) = %v, want an error without the password", u, err)
	}
}
