package vault

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/policies"
)

// DefaultTrustDomain is the trust domain of the URI SAN when neither the
// grant nor PKIMinterOptions name one.
const DefaultTrustDomain = "keytrail"

// DefaultPKIClockSkew is how far a certificate's NotAfter may pass
// req.Now+TTL (Vault's clock and the request's round trip) before the
// certificate is refused and revoked.
const DefaultPKIClockSkew = 5 * time.Second

// PKIMinterOptions configure NewPKIMinter.
type PKIMinterOptions struct {
	Client *vaultapi.Client // from NewClient (required)
	// Grant looks a grant up by name in the policy in force (required). Revoke
	// uses it to find the PKI mount of an issuance recorded without one
	// (written before Refs.Mount was kept).
	Grant func(name string) (*policies.Grant, bool)
	// TrustDomain is the URI SAN's trust domain for grants that do not name
	// one (default DefaultTrustDomain).
	TrustDomain string
	ClockSkew   time.Duration    // default DefaultPKIClockSkew
	Now         func() time.Time // default time.Now
	// Log gets what CheckRoles could not check; default slog.Default().
	Log *slog.Logger
	// Leases is noted when a certificate comes with a Vault lease, or
	// CheckRoles reads a role with generate_lease=true: that lease belongs
	// to the broker's token (see TokenLeases; share it with the Login).
	Leases *TokenLeases
}

// PKIMinter mints X.509 certificates for grants of kind pki from a Vault PKI
// role (grant pki.path: <mount>/issue/<role>, or
// <mount>/issuer/<issuer>/issue/<role>), and revokes them by serial.
//
// Each certificate has common_name = the workload's name (not repeated as a
// DNS SAN), one URI SAN spiffe://<trust domain>/<workload> (the grant's
// pki.trust_domain, else TrustDomain), ttl = the request's TTL in whole
// seconds, less the time already spent since req.Now, and a PKCS#8 private
// key. Vault's answer is checked before it is handed out: the certificate
// parses, carries the URI SAN, has the serial Vault reports, and ends no
// later than req.Now+TTL (give or take ClockSkew); otherwise it is revoked.
//
// The credential: AccessToken is the leaf certificate in PEM, exactly as
// Vault returned it (so the recorded fingerprint can be recomputed from the
// certificate alone; the private key is only in Fields); Fields are
// certificate, private_key, private_key_type, issuing_ca, ca_chain (a list
// of PEM certificates), serial_number, uri_san and expiration (Unix
// seconds); Refs carry Serial (Vault's form: lowercase hex pairs joined by
// ":"), Mount (the mount of the issue path, where Revoke revokes it) and
// ExpiresAt (the certificate's NotAfter, at most req.Now+TTL).
type PKIMinter struct {
	c      *vaultapi.Client
	grant  func(string) (*policies.Grant, bool)
	td     string
	skew   time.Duration
	now    func() time.Time
	log    *slog.Logger
	leases *TokenLeases
	roles  pkiRoleStates // CheckRoles: what it last found of each grant's role
}

// pkiRoleStates remembers, per grant and role path, the stable reason
// (pkiRoleReason) the role could not be read at the last check ("" when
// it could), so that CheckRoles warns
// once per change rather than at every policy reload.
type pkiRoleStates struct {
	mu   sync.Mutex
	last map[pkiRoleKey]string
}

type pkiRoleKey struct{ grant, path string }

// set records why (empty: readable) and reports whether it differs from
// what was recorded; a key not seen before counts as readable. A nil s
// remembers nothing: every unreadable role is a change.
func (s *pkiRoleStates) set(k pkiRoleKey, why string) (changed bool, was string) {
	if s == nil {
		return why != "", ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last == nil {
		s.last = map[pkiRoleKey]string{}
	}
	was = s.last[k]
	if why == "" {
		delete(s.last, k)
	} else {
		s.last[k] = why
	}
	return was != why, was
}

// keep forgets the grants (and role paths) pol no longer has, so that one
// added back is warned about anew.
func (s *pkiRoleStates) keep(grants []policies.Grant) {
	if s == nil {
		return
	}
	now := map[pkiRoleKey]bool{}
	for _, g := range grants {
		if g.PKI == nil {
			continue
		}
		if path, ok := pkiRolePath(g.PKI.Path); ok {
			now[pkiRoleKey{g.Name, path}] = true
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.last {
		if !now[k] {
			delete(s.last, k)
		}
	}
}

// pkiRolePath is <mount>/roles/<role> of a pki issue path.
func pkiRolePath(issuePath string) (string, bool) {
	mount, ok := PKIMount(issuePath)
	if !ok {
		return "", false
	}
	return mount + "/roles/" + issuePath[strings.LastIndex(issuePath, "/")+1:], true
}

var (
	_ broker.Minter  = (*PKIMinter)(nil)
	_ broker.Revoker = (*PKIMinter)(nil)
)

// NewPKIMinter validates o and returns a PKIMinter.
func NewPKIMinter(o PKIMinterOptions) (*PKIMinter, error) {
	var errs []error
	if o.Client == nil {
		errs = append(errs, errors.New("vault pki minter: client is required"))
	}
	if o.Grant == nil {
		errs = append(errs, errors.New("vault pki minter: grant lookup is required"))
	}
	td := o.TrustDomain
	if td == "" {
		td = DefaultTrustDomain
	}
	if !validTrustDomain(td) {
		errs = append(errs, fmt.Errorf("vault pki minter: trust domain %q: must be a bare name like example.org", td))
	}
	if o.ClockSkew < 0 {
		errs = append(errs, errors.New("vault pki minter: clock skew must not be negative"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	skew := o.ClockSkew
	if skew == 0 {
		skew = DefaultPKIClockSkew
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	return &PKIMinter{c: o.Client, grant: o.Grant, td: td, skew: skew, now: now, log: log, leases: o.Leases}, nil
}

// CheckRoles reads the PKI role of each pki grant of pol
// (<mount>/roles/<role> of its issue path; PKIBrokerPolicy grants read on
// it) and fails, with a vault_config error naming the grant, when a role
// sets no_store=true: Vault keeps no record of the certificates such a
// role issues, so revoking one by serial fails ("not found") until it
// expires, and a keytrail revocation of an issuance of that grant would
// fail, retried, until then. A role it cannot read (the broker's token
// lacks read on it, no such role or mount yet, Vault unreachable) is
// logged at WARN and skipped: issuing through it fails or works as before.
// That warning is logged once per change (the first check that cannot read
// the role, or that cannot read it for another reason than the last), not
// at every policy reload; a role readable again is logged at INFO.
func (m *PKIMinter) CheckRoles(ctx context.Context, pol *policies.Policy) error {
	return checkPKIRoles(ctx, m.c, pol, m.log, &m.roles, m.leases)
}

// CheckPKIRoles is PKIMinter.CheckRoles with the client c, logging to log
// (nil: slog.Default()), remembering nothing: every role it cannot read is
// warned about at every call.
func CheckPKIRoles(ctx context.Context, c *vaultapi.Client, pol *policies.Policy, log *slog.Logger) error {
	return checkPKIRoles(ctx, c, pol, log, nil, nil)
}

func checkPKIRoles(ctx context.Context, c *vaultapi.Client, pol *policies.Policy, log *slog.Logger, states *pkiRoleStates, leases *TokenLeases) error {
	if log == nil {
		log = slog.Default()
	}
	if pol == nil {
		return nil
	}
	const op = "read pki role"
	var errs []error
	grants := pol.Grants()
	states.keep(grants)
	for i, g := range grants {
		if g.PKI == nil {
			continue
		}
		path, ok := pkiRolePath(g.PKI.Path)
		if !ok {
			continue // policies validation refuses it; Mint says so
		}
		sec, err := c.Logical().ReadWithContext(ctx, path)
		if err != nil || sec == nil || sec.Data == nil {
			why, reason := "no such role", pkiRoleNone
			var re *vaultapi.ResponseError
			if err != nil {
				te := translate(op, err)
				why, reason = te.Error(), pkiRoleReason(te, err)
			}
			changed, _ := states.set(pkiRoleKey{g.Name, path}, reason)
			if changed {
				log.Warn("could not check the pki role of a grant (no_store must be false, or its certificates cannot be revoked); the broker's token needs read on it (logged again only when this changes)",
					slog.String("grant", g.Name), slog.String("path", path), slog.String("reason", reason), slog.String("error", why))
			}
			if err != nil && !errors.As(err, &re) {
				// Vault did not answer (down, unreachable, timed out,
				// ctx ended): each further read would wait as long for
				// nothing, and a policy reload with it. What is known of
				// the other grants' roles stays as it was.
				var rest []string
				for _, g := range grants[i+1:] {
					if g.PKI != nil {
						rest = append(rest, g.Name)
					}
				}
				if changed && len(rest) > 0 {
					log.Warn("vault did not answer: the pki roles of the other grants are not checked", slog.Any("grants", rest))
				}
				break
			}
			continue
		}
		if changed, was := states.set(pkiRoleKey{g.Name, path}, ""); changed {
			log.Info("the pki role of the grant can be read again", slog.String("grant", g.Name), slog.String("path", path), slog.String("was", was))
		}
		if gen, _ := sec.Data["generate_lease"].(bool); gen {
			noteBrokerLease(leases, log, g.Name, "its pki role sets generate_lease=true")
		}
		if noStore, _ := sec.Data["no_store"].(bool); noStore {
			errs = append(errs, configError("grant %q: pki role %s sets no_store=true: Vault does not store the certificates it issues, so none can be revoked by serial (keytrail's revocation of an issuance of the grant would fail until the certificate expires); set no_store=false on the role", g.Name, path))
		}
	}
	return errors.Join(errs...)
}

// pkiRoleNone is the reason of a role read that found no role.
const pkiRoleNone = "no_such_role"

// pkiRoleReason is the stable reason a role read failed with err (te is
// err translated), what pkiRoleStates remembers: the translated error's
// reason and Vault's status, or "no answer" when Vault did not answer;
// never the error's text, which may differ from one read to the next for
// the same cause (an address, a request id, a duration).
func pkiRoleReason(te, err error) string {
	reason := broker.AsError(te).Reason
	var re *vaultapi.ResponseError
	if errors.As(err, &re) {
		return reason + ": status " + strconv.Itoa(re.StatusCode)
	}
	return reason + ": no answer"
}

// noteBrokerLease notes in leases that a lease may belong to the broker's
// token, warning the first time.
func noteBrokerLease(leases *TokenLeases, log *slog.Logger, grant, why string) {
	if leases.Note() {
		log.Warn("a pki grant's certificates hold vault leases owned by the broker's token (the role's generate_lease=true): vault revokes them, putting the certificates on the crl, when that token ends; tokens a re-login replaces are left valid until their ttl from now on: set generate_lease=false on the role",
			slog.String("grant", grant), slog.String("why", why))
	}
}

// validTrustDomain accepts what SPIFFE allows in a trust domain name.
func validTrustDomain(td string) bool {
	if td == "" || len(td) > 255 {
		return false
	}
	for _, r := range td {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// PKIMount returns the mount of a PKI issue path: "pki" for pki/issue/web,
// "pki/int" for pki/int/issuer/default/issue/web. It reports false for a
// path that is not an issue path.
func PKIMount(path string) (string, bool) {
	if !validName(path) {
		return "", false
	}
	segs := strings.Split(path, "/")
	// <mount...>/issue/<role>
	n := len(segs)
	if n < 3 || segs[n-2] != "issue" {
		return "", false
	}
	mount := segs[:n-2]
	// <mount...>/issuer/<ref>/issue/<role>
	if len(mount) >= 3 && mount[len(mount)-2] == "issuer" {
		mount = mount[:len(mount)-2]
	}
	return strings.Join(mount, "/"), true
}

// SPIFFEID returns spiffe://<trustDomain>/<workload>, the workload's name
// escaped as one path segment.
func SPIFFEID(trustDomain, workload string) string {
	return "spiffe://" + trustDomain + "/" + url.PathEscape(workload)
}

// issueBody is the body of the issue call.
func issueBody(workload, uriSAN string, secs int64) map[string]any {
	return map[string]any{
		"common_name":          workload,
		"exclude_cn_from_sans": true,
		"uri_sans":             uriSAN,
		"ttl":                  strconv.FormatInt(secs, 10) + "s",
		"format":               "pem",
		"private_key_format":   "pkcs8",
	}
}

// Mint issues one certificate. It never retries.
func (m *PKIMinter) Mint(ctx context.Context, req broker.MintRequest) (*broker.Credential, error) {
	g := req.Grant.PKI
	if req.Grant.Kind != broker.KindPKI || g == nil {
		return nil, configError("grant %q of kind %q is not a pki grant", req.Grant.Name, req.Grant.Kind)
	}
	mount, ok := PKIMount(g.Path)
	switch {
	case !ok:
		return nil, configError("grant %q: pki path %q is not <mount>/issue/<role>", req.Grant.Name, g.Path)
	case req.IssuanceID == "" || req.Workload == "":
		return nil, configError("mint request without issuance id or workload")
	}
	td := g.TrustDomain
	if td == "" {
		td = m.td
	}
	if !validTrustDomain(td) {
		return nil, configError("grant %q: bad trust domain %q", req.Grant.Name, td)
	}
	deadline := req.Now.Add(req.TTL)
	left := req.TTL
	if !req.Now.IsZero() {
		left = deadline.Sub(m.now())
	} else {
		deadline = m.now().Add(req.TTL)
	}
	secs := int64(left / time.Second)
	if secs < 1 {
		return nil, broker.Errorf(broker.ErrInvalidRequest, "ttl_too_short", "the requested ttl is too short", fmt.Errorf("vault pki ttl %v < 1s", left))
	}
	uriSAN := SPIFFEID(td, req.Workload)

	const op = "issue certificate"
	sec, err := m.c.Logical().WriteWithContext(ctx, g.Path, issueBody(req.Workload, uriSAN, secs))
	if err != nil {
		return nil, translate(op, err)
	}
	if sec != nil && sec.LeaseID != "" {
		// Before any check: the lease exists whatever is done with the
		// certificate.
		noteBrokerLease(m.leases, m.log, req.Grant.Name, "a certificate came with a vault lease")
	}
	if sec == nil || sec.Data == nil {
		return nil, badResponse(op, "no data")
	}
	str := func(k string) string { s, _ := sec.Data[k].(string); return s }
	certPEM, keyPEM, serial := str("certificate"), str("private_key"), str("serial_number")
	if serial == "" && certPEM != "" {
		// Vault always sends it; without it, revoke by the certificate's
		// own serial rather than leave a certificate nobody holds valid.
		if c, err := parseCertPEM(certPEM); err == nil {
			return nil, m.abort(ctx, mount, formatSerial(c.SerialNumber), badResponse(op, "no serial number"))
		}
	}
	if certPEM == "" || keyPEM == "" || serial == "" {
		if serial != "" {
			return nil, m.abort(ctx, mount, serial, badResponse(op, "no certificate or private key"))
		}
		return nil, badResponse(op, "no certificate, private key or serial number")
	}
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, m.abort(ctx, mount, serial, badResponse(op, "certificate: "+err.Error()))
	}
	if want, err := parseSerial(serial); err != nil || want.Cmp(cert.SerialNumber) != 0 {
		return nil, m.abort(ctx, mount, serial, badResponse(op, fmt.Sprintf("serial_number %q does not match the certificate's", serial)))
	}
	if !slices.ContainsFunc(cert.URIs, func(u *url.URL) bool { return u.String() == uriSAN }) {
		return nil, m.abort(ctx, mount, serial, configError("grant %q: certificate lacks URI SAN %s: the role must allow it (allowed_uri_sans)", req.Grant.Name, uriSAN))
	}
	// SPEC-ADDITIONS: common name = the workload, exactly one URI SAN. A
	// role that adds names would make the certificate speak for more than
	// this workload.
	if len(cert.URIs) != 1 || cert.Subject.CommonName != req.Workload {
		return nil, m.abort(ctx, mount, serial, configError("grant %q: certificate has common name %q and %d URI SANs, want %q and only %s: check the role", req.Grant.Name, cert.Subject.CommonName, len(cert.URIs), req.Workload, uriSAN))
	}
	if cert.NotAfter.After(deadline.Add(m.skew)) {
		return nil, m.abort(ctx, mount, serial, badResponse(op, fmt.Sprintf("certificate ends %s, after the grant's %s", cert.NotAfter.UTC().Format(time.RFC3339), deadline.UTC().Format(time.RFC3339))))
	}

	var chain []string
	if raw, ok := sec.Data["ca_chain"].([]any); ok {
		for _, c := range raw {
			if s, ok := c.(string); ok && s != "" {
				chain = append(chain, s)
			}
		}
	}
	expires := cert.NotAfter
	if expires.After(deadline) {
		expires = deadline // within the skew: Vault's clock
	}
	return &broker.Credential{
		AccessToken: certPEM,
		Fields: map[string]any{
			"certificate":      certPEM,
			"private_key":      keyPEM,
			"private_key_type": str("private_key_type"),
			"issuing_ca":       str("issuing_ca"),
			"ca_chain":         chain,
			"serial_number":    serial,
			"uri_san":          uriSAN,
			"expiration":       cert.NotAfter.Unix(),
		},
		Refs: broker.CredentialRefs{Serial: serial, Mount: mount, ExpiresAt: expires},
	}, nil
}

// abort revokes a certificate that will not be handed out and returns cause.
func (m *PKIMinter) abort(ctx context.Context, mount, serial string, cause error) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if err := m.revokeSerial(rctx, mount, serial, false); err != nil {
		be := broker.AsError(cause)
		be.Err = errors.Join(be.Err, fmt.Errorf("cleanup: revoking serial %s: %w", serial, err))
		return &broker.UnrevokedError{Refs: broker.CredentialRefs{Serial: serial, Mount: mount}, Err: be}
	}
	return cause
}

// Revoke revokes the issuance's certificate by serial on the mount that
// issued it: the one recorded on the issuance (Refs.Mount), whatever the
// policy in force says of its grant now (removed, renamed, moved to another
// mount). A record written before the mount was recorded falls back to the
// mount of its grant in the policy in force. An already revoked certificate
// counts as revoked; so does an expired one, including one Vault no longer
// knows (tidied) and, for such an old record, one whose grant is gone from
// the policy. A certificate Vault does not know before its expiry is an
// error (a wrong mount, or a role with no_store=true).
func (m *PKIMinter) Revoke(ctx context.Context, is *broker.Issuance) error {
	if is == nil || is.Refs.Serial == "" {
		return broker.Errorf(broker.ErrInvalidRequest, "missing_serial", "the issuance has no certificate serial", errors.New("vault revoke: issuance without serial"))
	}
	expired := !is.ExpiresAt.IsZero() && !m.now().Before(is.ExpiresAt)
	if mount := is.Refs.Mount; mount != "" {
		if !validName(mount) {
			return configError("revoke %s: recorded pki mount %q is not a mount path", is.ID, mount)
		}
		return m.revokeSerial(ctx, mount, is.Refs.Serial, expired)
	}
	g, ok := m.grant(is.Grant)
	if !ok || g.PKI == nil {
		if expired {
			return nil
		}
		return configError("revoke %s: no recorded pki mount, and grant %q is not a pki grant of the policy in force", is.ID, is.Grant)
	}
	mount, ok := PKIMount(g.PKI.Path)
	if !ok {
		return configError("revoke %s: grant %q: pki path %q is not <mount>/issue/<role>", is.ID, is.Grant, g.PKI.Path)
	}
	return m.revokeSerial(ctx, mount, is.Refs.Serial, expired)
}

func (m *PKIMinter) revokeSerial(ctx context.Context, mount, serial string, expired bool) error {
	_, err := m.c.Logical().WriteWithContext(ctx, mount+"/revoke", map[string]any{"serial_number": serial})
	switch {
	case err == nil:
		// Revoked now, already revoked, or expired (a 200 with a warning).
		return nil
	case expired && responseSays(err, 400, "not found"):
		return nil
	default:
		return translate("revoke certificate", err)
	}
}

// parseCertPEM parses the first PEM block of s as a certificate.
func parseCertPEM(s string) (*x509.Certificate, error) {
	b, _ := pem.Decode([]byte(s))
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

// formatSerial writes a serial in Vault's form: lowercase hex byte pairs
// joined by ":".
func formatSerial(n *big.Int) string {
	b := n.Bytes()
	if len(b) == 0 {
		b = []byte{0}
	}
	parts := make([]string, len(b))
	for i, c := range b {
		parts[i] = hex.EncodeToString([]byte{c})
	}
	return strings.Join(parts, ":")
}

// parseSerial parses Vault's serial form ("1a:2b:..." or plain hex).
func parseSerial(s string) (*big.Int, error) {
	h := strings.ReplaceAll(strings.ReplaceAll(s, ":", ""), "-", "")
	b, err := hex.DecodeString(h)
	if err != nil || len(b) == 0 {
		return nil, fmt.Errorf("bad serial %q", s)
	}
	return new(big.Int).SetBytes(b), nil
}

// PKIBrokerPolicy returns the HCL the broker's own token needs for a pki
// grant with the given issue path: update on the path and on
// <mount>/revoke, and read on <mount>/roles/<role> (CheckRoles).
func PKIBrokerPolicy(issuePath string) (string, error) {
	stanzas, err := pkiStanzas(issuePath)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, s := range stanzas {
		b.WriteString(s.hcl())
	}
	return b.String(), nil
}

// policyStanza is one path of a Vault policy with one capability.
type policyStanza struct{ path, capability string }

func (s policyStanza) hcl() string {
	return fmt.Sprintf("path %q {\n  capabilities = [%q]\n}\n", s.path, s.capability)
}

// pkiStanzas are PKIBrokerPolicy's paths: update on the issue path and on
// <mount>/revoke, read on <mount>/roles/<role>.
func pkiStanzas(issuePath string) ([]policyStanza, error) {
	mount, ok := PKIMount(issuePath)
	role, _ := pkiRolePath(issuePath)
	if !ok {
		return nil, fmt.Errorf("pki path %q is not <mount>/issue/<role>", issuePath)
	}
	return []policyStanza{{issuePath, "update"}, {mount + "/revoke", "update"}, {role, "read"}}, nil
}
