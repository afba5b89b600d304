package proxy

import (
	"net/http"
	"sync/atomic"

	"github.com/keytrail/keytrail/policies"
)

// policyView holds copies of one policy's grants and workloads, by name,
// for the checks of proxied requests: Policy.Grant and Policy.Workload copy
// what they return (7 allocations per request between them), which the
// proxy only reads. A view is built once per policy (a reload makes a new
// Policy value, hence a new view) and never modified after; what it hands
// out must not be modified either.
type policyView struct {
	pol       *policies.Policy
	grants    map[string]*viewGrant
	workloads map[string]*policies.Workload
}

// viewGrant is a grant of a policyView with what the proxy derives from it
// once per policy rather than on every request.
type viewGrant struct {
	policies.Grant
	// injectHeader is Proxy.Inject.Header as net/http keys it
	// (http.CanonicalHeaderKey), "" when the secret goes elsewhere.
	injectHeader string
}

func newPolicyView(pol *policies.Policy) *policyView {
	gs, ws := pol.Grants(), pol.Workloads()
	v := &policyView{pol: pol, grants: make(map[string]*viewGrant, len(gs)), workloads: make(map[string]*policies.Workload, len(ws))}
	for i := range gs {
		g := &viewGrant{Grant: gs[i]}
		if g.Proxy != nil && g.Proxy.Inject.Header != "" {
			g.injectHeader = http.CanonicalHeaderKey(g.Proxy.Inject.Header)
		}
		v.grants[g.Name] = g
	}
	for i := range ws {
		v.workloads[ws[i].Name] = &ws[i]
	}
	return v
}

// policyViews keeps the view of the policy last asked about.
type policyViews struct{ cur atomic.Pointer[policyView] }

// of returns the view of pol, building it when pol is not the policy of the
// view kept (after a reload), which it then replaces; built says it did.
func (vs *policyViews) of(pol *policies.Policy) (v *policyView, built bool) {
	if v := vs.cur.Load(); v != nil && v.pol == pol {
		return v, false
	}
	v = newPolicyView(pol)
	vs.cur.Store(v)
	return v, true
}

// grant is Policy.Grant without the copy.
func (v *policyView) grant(name string) (*viewGrant, bool) {
	g, ok := v.grants[name]
	return g, ok
}

// workload is Policy.Workload without the copy.
func (v *policyView) workload(name string) (*policies.Workload, bool) {
	w, ok := v.workloads[name]
	return w, ok
}
