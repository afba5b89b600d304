package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
	"weak"

	"github.com/keytrail/keytrail/policies"
)

// errAddressRefused marks a dial the grant does not allow.
var errAddressRefused = errors.New("upstream address refused")

// nonPublic lists address ranges that are not publicly routable or that can
// reach private networks through translation, beyond what netip's
// predicates cover. Never modified.
var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),       // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),   // carrier-grade NAT
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
	netip.MustParsePrefix("192.0.2.0/24"),    // TEST-NET-1
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
	netip.MustParsePrefix("198.51.100.0/24"), // TEST-NET-2
	netip.MustParsePrefix("203.0.113.0/24"),  // TEST-NET-3
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, broadcast
	netip.MustParsePrefix("64:ff9b::/96"),    // NAT64 (may embed a private IPv4)
	netip.MustParsePrefix("64:ff9b:1::/48"),  // local-use NAT64
	netip.MustParsePrefix("100::/64"),        // discard
	netip.MustParsePrefix("2001::/32"),       // Teredo
	netip.MustParsePrefix("2001:db8::/32"),   // documentation
	netip.MustParsePrefix("2002::/16"),       // 6to4 (may embed a private IPv4)
	netip.MustParsePrefix("fec0::/10"),       // deprecated site-local
}

// publicAddr reports whether a is a publicly routable unicast address.
func publicAddr(a netip.Addr) bool {
	a = a.Unmap()
	if !a.IsValid() || a.Zone() != "" || a.IsUnspecified() || a.IsLoopback() || a.IsPrivate() ||
		a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() || a.IsInterfaceLocalMulticast() || a.IsMulticast() {
		return false
	}
	for _, p := range nonPublic {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

// upstreamDialer dials only the grant's upstream host and port, resolving
// the name itself and checking every address it dials.
type upstreamDialer struct {
	host         string // hostname, lower case, no brackets
	port         string
	allowPrivate bool
	resolver     *net.Resolver
	dialer       net.Dialer
}

func newUpstreamDialer(u *url.URL, allowPrivate bool, resolver *net.Resolver, timeout time.Duration) *upstreamDialer {
	d := &upstreamDialer{
		host:         strings.ToLower(u.Hostname()),
		port:         upstreamPort(u),
		allowPrivate: allowPrivate,
		resolver:     resolver,
	}
	d.dialer = net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second, Control: d.control}
	return d
}

func upstreamPort(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if u.Scheme == "http" {
		return "80"
	}
	return "443"
}

// control re-checks the address actually connected to.
func (d *upstreamDialer) control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: unparsable address", errAddressRefused)
	}
	if strconv.Itoa(int(ap.Port())) != d.port {
		return fmt.Errorf("%w: port %d is not the upstream's", errAddressRefused, ap.Port())
	}
	if !d.allowPrivate && !publicAddr(ap.Addr()) {
		return fmt.Errorf("%w: %s is not a public address (the grant does not set allow_private)", errAddressRefused, ap.Addr())
	}
	return nil
}

// DialContext is the Transport's dialer.
func (d *upstreamDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("%w: network %q", errAddressRefused, network)
	}
	h, port, err := net.SplitHostPort(addr)
	if err != nil || !strings.EqualFold(h, d.host) || port != d.port {
		return nil, fmt.Errorf("%w: %q is not the grant's upstream", errAddressRefused, addr)
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(h); err == nil {
		addrs = []netip.Addr{a}
	} else {
		addrs, err = d.resolver.LookupNetIP(ctx, "ip", h)
		if err != nil {
			return nil, fmt.Errorf("resolve upstream %s: %w", h, err)
		}
	}
	var firstErr error
	for _, a := range addrs {
		a = a.Unmap()
		if !d.allowPrivate && !publicAddr(a) {
			if firstErr == nil {
				firstErr = fmt.Errorf("%w: %s resolves to %s, not a public address (the grant does not set allow_private)", errAddressRefused, h, a)
			}
			continue
		}
		conn, err := d.dialer.DialContext(ctx, network, net.JoinHostPort(a.String(), d.port))
		if err == nil {
			return conn, nil
		}
		if firstErr == nil || errors.Is(firstErr, errAddressRefused) {
			firstErr = err
		}
	}
	if firstErr == nil {
		firstErr = fmt.Errorf("%w: %s has no address", errAddressRefused, h)
	}
	return nil, firstErr
}

// grantTransport is the upstream connection pool of one grant as one
// policy (gen) resolved it, or why it could not be built (err): kept, as
// the connection pool is, for every request of that policy, so that a grant
// whose transport cannot be built (its ca_file unreadable) costs each
// proxied request no file I/O and answers the same error until a reload
// (a new policy) tries again. The policy is held weakly: an entry of a
// grant with no request since a reload (or removed by it) must not keep
// the old policy, its grants and its ca_file bytes in memory.
type grantTransport struct {
	gen      weak.Pointer[policies.Policy] // the policy it was resolved for
	key      transportKey                  // what rt is built from; zero when err is set
	pool     *x509.CertPool                // the ca_file's certificates rt trusts; nil without one
	upstream *url.URL
	rt       *http.Transport
	err      error // why the transport could not be built; rt is nil then
}

// transportKey is what a grant's transport is built from, with the
// certificates of its CA bundle (grantTransport.pool, compared with
// x509.CertPool.Equal, not kept as the bundle's bytes: a copy per grant): a
// reload that changes none of it (an unrelated grant edited, a SIGHUP)
// keeps the connection pool, one that changes the bundle's certificates (a
// CA rotation, whether or not the policy files changed) builds a new one.
// A struct, compared field by field once per grant and policy.
type transportKey struct {
	upstream, caFile string
	allowPrivate     bool
}

// transport returns the grant's transport for pol, the policy g is of:
// resolved once per grant and policy, the outcome (an error included)
// kept until a request of another policy asks. A transport built from the
// same upstream, CA bundle and allow_private as the previous policy's is
// that transport (its idle connections kept); otherwise the old one's idle
// connections are closed.
func (p *Proxy) transport(pol *policies.Policy, g *policies.Grant) (*grantTransport, error) {
	p.mu.Lock()
	gt := p.transports[g.Name]
	p.mu.Unlock()
	if gt != nil && gt.gen.Value() == pol {
		return gt, gt.err
	}
	nt := &grantTransport{gen: weak.Make(pol)}
	key, u, pool, err := resolveTransport(pol, g)
	if err != nil {
		nt.err = err
	} else {
		nt.key, nt.pool, nt.upstream = key, pool, u
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	cur := p.transports[g.Name]
	switch {
	case cur != nil && cur.gen.Value() == pol: // resolved concurrently: keep the first
		return cur, cur.err
	case nt.err != nil:
	case cur != nil && cur.rt != nil && cur.key == key && cur.pool.Equal(pool):
		nt.rt, nt.pool = cur.rt, cur.pool // unchanged: the same connection pool
	default:
		nt.rt = p.buildTransport(u, pool, g)
	}
	if cur != nil && cur.rt != nil && cur.rt != nt.rt {
		cur.rt.CloseIdleConnections()
	}
	p.transports[g.Name] = nt
	return nt, nt.err
}

// resolveTransport checks the upstream of g, a grant of pol, and reads its
// CA bundle: what its transport is built from, and the bundle's pool (nil
// without ca_file).
func resolveTransport(pol *policies.Policy, g *policies.Grant) (key transportKey, u *url.URL, pool *x509.CertPool, err error) {
	px := g.Proxy
	u, err = url.Parse(px.Upstream)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return transportKey{}, nil, nil, fmt.Errorf("grant %s: upstream is not an http(s) URL", g.Name)
	}
	key = transportKey{upstream: px.Upstream, caFile: px.CAFile, allowPrivate: px.AllowPrivate}
	if px.CAFile != "" {
		// The bytes the policy's CheckFiles read and checked (the
		// reload accepted those, the file may have changed since), or
		// read now, once for the policy (Policy.CAFile): as a policy
		// file is, a named pipe, a device or a directory refused,
		// naming it, not waited on by the request that builds the
		// transport or read without end.
		pem, err := pol.CAFile(px.CAFile)
		if err != nil {
			return transportKey{}, nil, nil, fmt.Errorf("grant %s: ca_file: %w", g.Name, err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return transportKey{}, nil, nil, fmt.Errorf("grant %s: ca_file %s holds no PEM certificate", g.Name, px.CAFile)
		}
	}
	return key, u, pool, nil
}

// buildTransport builds the transport of grant g to upstream u, trusting
// pool when it is not nil (the system roots otherwise).
func (p *Proxy) buildTransport(u *url.URL, pool *x509.CertPool, g *policies.Grant) *http.Transport {
	px := g.Proxy
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
	t := p.o.Timeouts
	d := newUpstreamDialer(u, px.AllowPrivate, p.o.Resolver, t.Dial)
	rt := &http.Transport{
		Proxy:                  nil, // never a proxy from the environment
		DialContext:            d.DialContext,
		TLSClientConfig:        tlsConf,
		TLSHandshakeTimeout:    t.TLSHandshake,
		ResponseHeaderTimeout:  t.ResponseHeader,
		IdleConnTimeout:        t.IdleConn,
		ExpectContinueTimeout:  time.Second,
		MaxIdleConns:           4 * p.o.MaxIdleConnsPerHost,
		MaxIdleConnsPerHost:    p.o.MaxIdleConnsPerHost,
		MaxResponseHeaderBytes: 64 << 10,
		DisableCompression:     true, // the body scan needs plain bytes
		ForceAttemptHTTP2:      true,
	}
	return rt
}

// viewOf returns the view of pol (policyViews.of). The first request of a
// new policy (a reload) also drops the transports of the grants it no
// longer has as proxy grants (dropRemovedTransports).
func (p *Proxy) viewOf(pol *policies.Policy) *policyView {
	v, built := p.views.of(pol)
	if built {
		p.dropRemovedTransports(v)
	}
	return v
}

// dropRemovedTransports deletes the cache entries of the grants that are
// not proxy grants of v's policy and closes their idle connections: the
// cache is keyed by grant name, so an entry of a grant a reload removed
// (or renamed, or made another kind) was otherwise kept, with its
// transport and CA pool, for the process's life, one more per such reload.
// Only when v is of the policy in force: a request still running under an
// older policy (its view built after the reload's) must not drop the
// transports of the grants the reload added. An entry such a request adds
// for a removed grant goes at the next reload.
func (p *Proxy) dropRemovedTransports(v *policyView) {
	if p.o.Service != nil && p.o.Service.Policy() != v.pol {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, gt := range p.transports {
		if g, ok := v.grants[name]; ok && g.Proxy != nil {
			continue
		}
		if gt.rt != nil {
			gt.rt.CloseIdleConnections()
		}
		delete(p.transports, name)
	}
}

// CloseIdleConnections closes the idle upstream connections of every grant
// (call it on shutdown).
func (p *Proxy) CloseIdleConnections() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, gt := range p.transports {
		if gt.rt != nil {
			gt.rt.CloseIdleConnections()
		}
	}
}
