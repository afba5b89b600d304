package httpapi

// Auditor endpoints (SPEC "Security teams and auditors"):
//
//	GET /v1/admin/trace?q=<value>   trace   one issuance, its uses and revocations
//	GET /v1/admin/report            report  inventory and attribution gaps
//
// Both are authorized (and audited, allowed or denied) by
// Service.AuthorizeAdmin before anything is looked up. The admin event
// records the SHA-256 of q, never q itself: q may be a raw credential.

import (
	"context"
	"net/http"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/trace"
)

// TraceSource answers trace and report queries; *trace.Live is the
// broker's implementation (its own audit files plus the shared store).
//
// Trace MUST return an error wrapping broker.ErrInvalidRequest for a bad
// query and broker.ErrNotFound when nothing matches, and MUST NOT keep or
// log q. Report builds the report as of now.
type TraceSource interface {
	Trace(ctx context.Context, q string) (*trace.Result, error)
	Report(ctx context.Context) (*trace.Report, error)
}

var _ TraceSource = (*trace.Live)(nil)

// RegisterTrace adds the trace and report routes to mux. Wire it with
// Options.Extra.
func RegisterTrace(mux *http.ServeMux, s *Server, src TraceSource) {
	h := &traceHandlers{s: s, src: src}
	mux.HandleFunc("GET /v1/admin/trace", h.trace)
	mux.HandleFunc("GET /v1/admin/report", h.report)
}

type traceHandlers struct {
	s   *Server
	src TraceSource
}

func (h *traceHandlers) authorize(r *http.Request, role, action string, target map[string]any) error {
	_, err := h.s.authorizeAdmin(r, role, action, target)
	return err
}

func (h *traceHandlers) trace(w http.ResponseWriter, r *http.Request) {
	qs := r.URL.Query()
	q := qs.Get("q")
	target := map[string]any{}
	if q != "" {
		target["query_sha256"] = broker.Fingerprint(q)
	}
	if err := h.authorize(r, broker.RoleTrace, "trace", target); err != nil {
		h.s.WriteError(w, r, err)
		return
	}
	if _, err := queryParams(r, "q"); err != nil {
		h.s.WriteError(w, r, err)
		return
	}
	if len(qs["q"]) != 1 || q == "" {
		h.s.WriteError(w, r, broker.Errorf(broker.ErrInvalidRequest, "bad_query", "give exactly one non-empty q parameter", nil))
		return
	}
	if len(q) > trace.MaxQueryBytes {
		h.s.WriteError(w, r, broker.Errorf(broker.ErrInvalidRequest, "bad_query", "q is too long", nil))
		return
	}
	res, err := h.src.Trace(r.Context(), q)
	if err != nil {
		h.s.WriteError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (h *traceHandlers) report(w http.ResponseWriter, r *http.Request) {
	if err := h.authorize(r, broker.RoleReport, "report", nil); err != nil {
		h.s.WriteError(w, r, err)
		return
	}
	if err := noQuery(r); err != nil {
		h.s.WriteError(w, r, err)
		return
	}
	rep, err := h.src.Report(r.Context())
	if err != nil {
		h.s.WriteError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}
