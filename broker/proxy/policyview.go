package proxy

import (
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
	grants    map[string]*policies.Grant
	workloads map[string]*policies.Workload
}

func newPolicyView(pol *policies.Policy) *policyView {
	gs, ws := pol.Grants(), pol.Workloads()
	v := &policyView{pol: pol, grants: make(map[string]*policies.Grant, len(gs)), workloads: make(map[string]*policies.Workload, len(ws))}
	for i := range gs {
		v.grants[gs[i].Name] = &gs[i]
	}
	for i := range ws {
		v.workloads[ws[i].Name] = &ws[i]
	}
	return v
}

// policyViews keeps the view of the policy last asked about.
type policyViews struct{ cur atomic.Pointer[policyView] }

// of returns the view of pol, building it when pol is not the policy of the
// view kept (after a reload), which it then replaces.
func (vs *policyViews) of(pol *policies.Policy) *policyView {
	if v := vs.cur.Load(); v != nil && v.pol == pol {
		return v
	}
	v := newPolicyView(pol)
	vs.cur.Store(v)
	return v
}

// grant is Policy.Grant without the copy.
func (v *policyView) grant(name string) (*policies.Grant, bool) {
	g, ok := v.grants[name]
	return g, ok
}

// workload is Policy.Workload without the copy.
func (v *policyView) workload(name string) (*policies.Workload, bool) {
	w, ok := v.workloads[name]
	return w, ok
}
