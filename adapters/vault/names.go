package vault

import (
	"regexp"
	"strings"
)

// The checks of names that keytrail puts into Vault request paths (role,
// mount, transit key and secret path names), in one place.

// roleName is Vault's own rule for role names (its GenericNameRegex): word
// characters, with '.' and '-' inside.
var roleName = regexp.MustCompile(`^\w([\w.-]*\w)?$`)

// PlainRoleName reports whether s is a Vault role name (a token role, an
// auth method's role) that is safe as one path segment: what
// vault.token_role and vault.auth.role may be.
func PlainRoleName(s string) bool { return roleName.MatchString(s) }

// validName reports whether a transit key or mount name is a plain path
// segment list without traversal or query characters.
func validName(s string) bool {
	if s == "" || strings.ContainsAny(s, "?#%\\ ") || strings.HasPrefix(s, "/") || strings.HasSuffix(s, "/") {
		return false
	}
	for _, seg := range strings.Split(s, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
	}
	return true
}

// TransitKeyName reports whether s is a transit key name the JWT minter
// and TransitKeys accept: one plain path segment.
func TransitKeyName(s string) bool { return validName(s) && !strings.Contains(s, "/") }
