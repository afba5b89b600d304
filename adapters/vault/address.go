package vault

import (
	"errors"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strings"
	"sync"

	vaultapi "github.com/hashicorp/vault/api"
)

// DisplayAddress is a Vault address (or any URL) as messages and logs show
// it: scheme://host[:port] only, as broker/client shows the broker's
// address. Its user info (basic auth for a front proxy: the name may be a
// token as much as the password), path (a token pasted into it), query and
// fragment may hold a secret, and messages go to stderr (CI logs). An
// address that does not parse is shown as "(unparsable address)", since its
// text may hold any of them.
func DisplayAddress(addr string) string {
	u, err := url.Parse(addr)
	if err != nil {
		return "(unparsable address)"
	}
	bare := url.URL{Scheme: u.Scheme, Host: u.Host}
	return bare.String()
}

// userinfoInURL matches the user info of a URL in a text: what comes
// between "scheme://" and the first "@" before the host, as url.URL.String
// escapes it (no "/", "?", "#", "@", quote or space inside).
var userinfoInURL = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.\-]*://)[^/?#@\s"'` + "`" + `]*@`)

// maskedUserinfoInURL matches the user info net/http's errors quote: the
// name unescaped (it may hold "/" or "@"), then ":***@".
var maskedUserinfoInURL = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.\-]*://)[^\s"'` + "`" + `]*?:\*\*\*@`)

// HideUserinfo returns err with a text that names no user info of a URL, as
// DisplayAddress leaves it out: the user info of the URLs err's chain carries
// (*url.Error of net/http, which masks only the password, "user:***@", and
// *vaultapi.ResponseError, which quotes the request URL whole) and of addrs
// (the configured Vault address) is removed wherever it appears in the text
// (whole, as it was written, with the password masked as url.URL.Redacted
// and net/http mask it, or the name alone), and so is any other
// "scheme://...@". The path of addrs (a token may be pasted into it) is
// removed from the request URLs that quote it, as DisplayAddress leaves it
// out too. The result still unwraps to err (errors.Is and errors.As
// see what they saw), so retry decisions are unchanged; err itself is
// returned when its text has nothing to hide.
func HideUserinfo(err error, addrs ...string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	hidden := hideAddressPaths(hideUserinfoText(msg, userinfoURLs(err, addrs)...), addrs...)
	if hidden == msg {
		return err
	}
	return &maskedError{msg: hidden, err: err}
}

// clientAddresses are the addresses with a path (a token may be pasted into
// it) NewClient built a client for, each once, for translate: the errors of
// every request the adapter makes go through translate, which does not know
// which client failed, and hides the path of each of them. They come from
// the configuration (vault.address, VAULT_ADDR), so there are few: one per
// distinct address a process was configured with. Hiding another client's
// path too is harmless: it only applies where "//host/PATH/" appears.
var clientAddresses struct {
	sync.Mutex
	addrs []string
}

// rememberAddress adds addr to clientAddresses if it has a path.
func rememberAddress(addr string) {
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" || path.Clean("/"+u.Path) == "/" {
		return
	}
	clientAddresses.Lock()
	defer clientAddresses.Unlock()
	if !slices.Contains(clientAddresses.addrs, addr) {
		clientAddresses.addrs = append(clientAddresses.addrs, addr)
	}
}

// rememberedAddresses returns a copy of clientAddresses.
func rememberedAddresses() []string {
	clientAddresses.Lock()
	defer clientAddresses.Unlock()
	return slices.Clone(clientAddresses.addrs)
}

// userinfoURLs is addrs with the URLs err's chain names.
func userinfoURLs(err error, addrs []string) []string {
	urls := append([]string(nil), addrs...)
	var ue *url.Error
	if errors.As(err, &ue) {
		urls = append(urls, ue.URL)
	}
	var re *vaultapi.ResponseError
	if errors.As(err, &re) {
		urls = append(urls, re.URL)
	}
	return urls
}

// hideUserinfoText removes from msg the user info of urls, in every form a
// URL quotes it, then whatever other user info a URL in msg carries.
func hideUserinfoText(msg string, urls ...string) string {
	for _, raw := range urls {
		for _, ui := range userinfoForms(raw) {
			msg = strings.ReplaceAll(msg, "//"+ui+"@", "//")
		}
	}
	msg = maskedUserinfoInURL.ReplaceAllString(msg, "$1")
	return userinfoInURL.ReplaceAllString(msg, "$1")
}

// hideAddressPaths removes from msg (its user info already removed) the
// path of each of addrs (the configured Vault address: a token may be
// pasted into it) where a request URL of a client at that address shows
// it, "//host/PATH/v1/...", leaving "//host/v1/...". Longer paths go
// first: of two addresses of a host, one's path may start with the
// other's ("/a/TOKEN" and "/a/TOKEN/b"), and hiding the shorter one first
// would leave the rest of the longer one.
func hideAddressPaths(msg string, addrs ...string) string {
	type quoted struct{ host, path string }
	var all []quoted
	for _, raw := range addrs {
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			continue
		}
		cleaned := path.Clean("/" + u.Path)
		if cleaned == "/" {
			continue
		}
		forms := []string{
			strings.TrimRight(u.EscapedPath(), "/"),
			(&url.URL{Path: cleaned}).EscapedPath(),
			strings.TrimRight(u.Path, "/"),
			cleaned,
		}
		for _, p := range forms {
			if p != "" && p != "/" {
				all = append(all, quoted{u.Host, p})
			}
		}
	}
	slices.SortStableFunc(all, func(a, b quoted) int { return len(b.path) - len(a.path) })
	for _, q := range all {
		msg = strings.ReplaceAll(msg, "//"+q.host+q.path+"/", "//"+q.host+"/")
	}
	return msg
}

// userinfoForms lists the texts under which raw's user info may appear in
// a message, longest first: as written in raw, as url.URL.String escapes
// it, with the password masked ("xxxxx" of Redacted, "***" after the
// unescaped name of net/http), and the name alone.
func userinfoForms(raw string) []string {
	var forms []string
	if i := strings.Index(raw, "://"); i >= 0 {
		rest := raw[i+3:]
		if j := strings.Index(rest, ":***@"); j >= 0 {
			forms = append(forms, rest[:j+4]) // net/http's, name unescaped
		}
		if j := strings.IndexAny(rest, "/?#"); j >= 0 {
			rest = rest[:j]
		}
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			forms = append(forms, rest[:at])
		}
	}
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return forms
	}
	name := u.User.Username()
	forms = append(forms,
		u.User.String(),
		url.UserPassword(name, "xxxxx").String(),
		name+":***",
		url.User(name).String(),
		name,
	)
	return forms
}
