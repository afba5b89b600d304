package httpapi

// Admin endpoints of the security team (SPEC "Security teams and auditors").
// Every call goes through Service.AuthorizeAdmin first, which authenticates
// the Bearer identity token, checks the role and writes the `admin` audit
// event, allowed or denied. Roles:
//
//	POST   /v1/admin/revoke              revoke
//	GET    /v1/admin/revocations/{id}    revoke  (following one's own revocations)
//	GET    /v1/admin/blocks              revoke
//	DELETE /v1/admin/blocks/{workload}   revoke
//	GET    /v1/admin/issuances           trace   (inventory of what workloads hold)

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// Issuance listing limits.
const (
	defaultIssuanceLimit = 1000
	maxIssuanceLimit     = 10000
)

// RegisterAdmin adds the admin routes to mux. Wire it with Options.Extra.
func RegisterAdmin(mux *http.ServeMux, s *Server) {
	mux.HandleFunc("POST /v1/admin/revoke", s.handleAdminRevoke)
	mux.HandleFunc("GET /v1/admin/revocations/{id}", s.handleAdminRevocation)
	mux.HandleFunc("GET /v1/admin/blocks", s.handleAdminBlocks)
	mux.HandleFunc("DELETE /v1/admin/blocks/{workload}", s.handleAdminUnblock)
	mux.HandleFunc("GET /v1/admin/issuances", s.handleAdminIssuances)
}

// authorizeAdmin authorizes (and audits) one admin call; a refusal counts in
// keytrail_denies_total by its reason.
func (s *Server) authorizeAdmin(r *http.Request, role, action string, target map[string]any) (*broker.Admin, error) {
	return s.authorize(r, broker.AdminRequest{Role: role, Action: action, Target: target})
}

// authorize fills req's token, source and request id from r and
// authorizes (and audits) the call.
func (s *Server) authorize(r *http.Request, req broker.AdminRequest) (*broker.Admin, error) {
	req.Token, req.Source, req.RequestID = BearerToken(r, "Authorization"), s.Source(r), RequestID(r)
	a, err := s.o.Service.AuthorizeAdmin(r.Context(), req)
	if err != nil {
		s.metrics.ObserveRefusal("admin", err)
	}
	return a, err
}

// adminMiss authenticates and audits a call to a path or method under
// /v1/admin/ that no route serves, and returns the error to answer it with:
// miss itself for an admin, the authentication or authorization refusal
// for anyone else.
func (s *Server) adminMiss(r *http.Request, miss error) error {
	_, err := s.authorize(r, broker.AdminRequest{
		Action: "unknown_route", Target: map[string]any{"method": r.Method, "path": r.URL.Path}, Refuse: miss,
	})
	return err
}

// RevokeRequest is the body of POST /v1/admin/revoke.
type RevokeRequest struct {
	IssuanceID string `json:"issuance_id,omitempty"`
	SessionID  string `json:"session_id,omitempty"`
	Workload   string `json:"workload,omitempty"`
	Owner      string `json:"owner,omitempty"`
	Reason     string `json:"reason"`
	Block      bool   `json:"block,omitempty"`
	// Force accepts a workload or owner unknown to the policy in force
	// and to the store (docs/SPEC-ADDITIONS.md).
	Force bool `json:"force,omitempty"`
}

// Receipt is the answer of POST /v1/admin/revoke and GET
// /v1/admin/revocations/{id}. Status is "revoked" when every matched
// credential is ended, "pending" while some backend revocations are still
// being retried (their reasons are in Failed). SweepAt, until the
// revocation's sweep has run, is when the credentials minted while it ran
// are looked for and revoked under it; CompletedAt is set once nothing is
// pending, the sweep has run and the revocation's revoke event is durable
// (see broker/revoke.go lateDecision). Blocks, for a revocation that blocks, names
// the workloads it blocked (an empty list when it found none to block).
type Receipt struct {
	RevocationID string                 `json:"revocation_id"`
	Status       string                 `json:"status"`
	Matched      int                    `json:"matched"`
	Revoked      []string               `json:"revoked"`
	Pending      []string               `json:"pending"`
	Failed       []broker.RevokeFailure `json:"failed"`
	Selector     broker.RevokeSelector  `json:"selector"`
	Reason       string                 `json:"reason"`
	Block        bool                   `json:"block"`
	Blocks       []string               `json:"blocks,omitzero"`
	Admin        string                 `json:"admin,omitempty"`
	CreatedAt    time.Time              `json:"created_at"`
	SweepAt      *time.Time             `json:"sweep_at,omitempty"`
	CompletedAt  *time.Time             `json:"completed_at,omitempty"`
}

// Receipt statuses.
const (
	ReceiptRevoked = "revoked"
	ReceiptPending = "pending"
)

func receiptOf(r *broker.Revocation) Receipt {
	rc := Receipt{
		RevocationID: r.ID, Status: ReceiptRevoked, Matched: r.Matched,
		Revoked: append([]string{}, r.Revoked...), Pending: append([]string{}, r.Pending...),
		Failed: append([]broker.RevokeFailure{}, r.Failed...), Selector: r.Selector,
		Reason: r.Reason, Block: r.Block, Admin: r.Admin, CreatedAt: r.CreatedAt,
	}
	if len(rc.Pending) > 0 {
		rc.Status = ReceiptPending
	}
	if r.Block {
		rc.Blocks = append([]string{}, r.Blocks...)
	}
	if !r.SweepAt.IsZero() {
		t := r.SweepAt
		rc.SweepAt = &t
	}
	if !r.CompletedAt.IsZero() {
		t := r.CompletedAt
		rc.CompletedAt = &t
	}
	return rc
}

func (s *Server) handleAdminRevoke(w http.ResponseWriter, r *http.Request) {
	var req RevokeRequest
	derr := s.decodeJSON(w, r, &req)
	sel := broker.RevokeSelector{IssuanceID: req.IssuanceID, SessionID: req.SessionID, Workload: req.Workload, Owner: req.Owner}
	target := map[string]any{"selector": sel, "block": req.Block}
	if req.Force {
		target["force"] = true
	}
	if derr != nil {
		target = map[string]any{"body": "invalid"}
	}
	admin, err := s.authorizeAdmin(r, broker.RoleRevoke, "revoke", target)
	if err != nil {
		s.WriteError(w, r, err)
		return
	}
	if derr != nil {
		s.WriteError(w, r, derr)
		return
	}
	rev, err := s.o.Service.Revoke(r.Context(), admin, sel, req.Reason, broker.RevokeOptions{Block: req.Block, Force: req.Force}, RequestID(r))
	if err != nil {
		s.WriteError(w, r, err)
		return
	}
	rc := receiptOf(rev)
	status := http.StatusOK
	if rc.Status == ReceiptPending {
		status = http.StatusAccepted
	}
	writeJSON(w, status, rc)
}

func (s *Server) handleAdminRevocation(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := s.authorizeAdmin(r, broker.RoleRevoke, "get_revocation", map[string]any{"revocation_id": id}); err != nil {
		s.WriteError(w, r, err)
		return
	}
	if err := noQuery(r); err != nil {
		s.WriteError(w, r, err)
		return
	}
	rev, err := s.o.Service.GetRevocation(r.Context(), id)
	if err != nil {
		s.WriteError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, receiptOf(rev))
}

func (s *Server) handleAdminBlocks(w http.ResponseWriter, r *http.Request) {
	if _, err := s.authorizeAdmin(r, broker.RoleRevoke, "list_blocks", nil); err != nil {
		s.WriteError(w, r, err)
		return
	}
	if err := noQuery(r); err != nil {
		s.WriteError(w, r, err)
		return
	}
	blocks, err := s.o.Service.Blocks(r.Context())
	if err != nil {
		s.WriteError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"blocks": blocks})
}

func (s *Server) handleAdminUnblock(w http.ResponseWriter, r *http.Request) {
	workload := r.PathValue("workload")
	admin, err := s.authorizeAdmin(r, broker.RoleRevoke, "unblock", map[string]any{"workload": workload})
	if err != nil {
		s.WriteError(w, r, err)
		return
	}
	q, err := queryParams(r, "reason", "revocation_id")
	if err != nil {
		s.WriteError(w, r, err)
		return
	}
	if err := s.o.Service.UnblockIf(r.Context(), admin, workload, q["revocation_id"], q["reason"], RequestID(r)); err != nil {
		s.WriteError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"workload": workload, "unblocked": true})
}

func (s *Server) handleAdminIssuances(w http.ResponseWriter, r *http.Request) {
	q, qerr := queryParams(r, "workload", "owner", "session_id", "active", "limit")
	target := map[string]any{}
	for k, v := range q {
		target[k] = v
	}
	if _, err := s.authorizeAdmin(r, broker.RoleTrace, "list_issuances", target); err != nil {
		s.WriteError(w, r, err)
		return
	}
	if qerr != nil {
		s.WriteError(w, r, qerr)
		return
	}
	f := broker.IssuanceFilter{Workload: q["workload"], Owner: q["owner"], SessionID: q["session_id"], Limit: defaultIssuanceLimit}
	switch q["active"] {
	case "", "false":
	case "true":
		f.ActiveAt = s.o.Service.Now()
	default:
		s.WriteError(w, r, broker.Errorf(broker.ErrInvalidRequest, "bad_active", "active must be true or false", nil))
		return
	}
	if v := q["limit"]; v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxIssuanceLimit {
			s.WriteError(w, r, broker.Errorf(broker.ErrInvalidRequest, "bad_limit", "limit must be between 1 and "+strconv.Itoa(maxIssuanceLimit), nil))
			return
		}
		f.Limit = n
	}
	limit := f.Limit
	f.Limit++ // one more tells whether the list was cut
	list, err := s.o.Service.ListIssuances(r.Context(), f)
	if err != nil {
		s.WriteError(w, r, err)
		return
	}
	truncated := len(list) > limit
	if truncated {
		list = list[:limit]
	}
	writeJSON(w, http.StatusOK, map[string]any{"issuances": list, "truncated": truncated})
}

// decodeJSON decodes a capped application/json body strictly into v (a
// pointer to a struct): unknown fields, trailing data and URL query
// parameters are errors, and so is a field named twice or in another case
// than its json tag (checkFieldNames).
func (s *Server) decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || ct != "application/json" {
		return broker.Errorf(broker.ErrInvalidRequest, "bad_content_type", "body must be application/json", err)
	}
	if r.URL.RawQuery != "" {
		return broker.Errorf(broker.ErrInvalidRequest, "query_params", "parameters must be sent in the body, not the URL", nil)
	}
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.o.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return broker.Errorf(broker.ErrInvalidRequest, "body_too_large", "request body too large", err)
		}
		return broker.Errorf(broker.ErrInvalidRequest, "bad_body", "the request body could not be read", err)
	}
	if err := checkFieldNames(raw, reflect.TypeOf(v).Elem()); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return broker.Errorf(broker.ErrInvalidRequest, "bad_json", "body must be one JSON object with known fields only", err)
	}
	if err := dec.Decode(&struct{}{}); !errors.Is(err, io.EOF) {
		return broker.Errorf(broker.ErrInvalidRequest, "bad_json", "body must be one JSON object with known fields only", err)
	}
	return nil
}

// checkFieldNames refuses a top-level object that names a field of t twice
// (repeated_field) or in another case than its json tag (field_case).
// encoding/json keeps the last of repeated names and matches names without
// regard to case, so {"session_id":"a","Session_ID":"b"} would act on b
// while a reader of the body sees a. A name t does not have is bad_json,
// like the decoder's unknown fields; a body that is not an object is left
// to the decoder.
func checkFieldNames(raw []byte, t reflect.Type) error {
	var names []string
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name != "" && name != "-" {
			names = append(names, name)
		}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		key, _ := tok.(string)
		switch {
		case seen[key]:
			return broker.Errorf(broker.ErrInvalidRequest, "repeated_field", "field "+key+" must not repeat", nil)
		case slices.Contains(names, key):
			seen[key] = true
		default:
			for _, name := range names {
				if strings.EqualFold(key, name) {
					return broker.Errorf(broker.ErrInvalidRequest, "field_case", "field names are case-sensitive: write "+name, nil)
				}
			}
			// Unknown, whatever encoding/json's case folding would make of it.
			return broker.Errorf(broker.ErrInvalidRequest, "bad_json", "body must be one JSON object with known fields only", nil)
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return nil
		}
	}
	return nil
}

// queryParams returns the allowed query parameters. An unknown or repeated
// one is an error naming it (the first in sorted order); the map then holds
// the allowed ones that were well-formed.
func queryParams(r *http.Request, allowed ...string) (map[string]string, error) {
	vals, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, broker.Errorf(broker.ErrInvalidRequest, "bad_query", "malformed query string", err)
	}
	out := map[string]string{}
	var first error
	for _, k := range slices.Sorted(maps.Keys(vals)) {
		v := vals[k]
		switch {
		case !slices.Contains(allowed, k):
			takes := "none"
			if len(allowed) > 0 {
				takes = strings.Join(allowed, ", ")
			}
			err = broker.Errorf(broker.ErrInvalidRequest, "unknown_param", "unknown query parameter "+paramName(k)+"; this endpoint takes "+takes, nil)
		case len(v) != 1:
			err = broker.Errorf(broker.ErrInvalidRequest, "repeated_param", "parameter "+k+" must not repeat", nil)
		default:
			out[k] = v[0]
			continue
		}
		if first == nil {
			first = err
		}
	}
	return out, first
}

// paramName is a caller's parameter name as an error may show it: quoted
// when it looks like one (up to 32 lowercase letters, digits and
// underscores), else not at all, as it may be a credential pasted in the
// wrong place.
func paramName(k string) string {
	ok := len(k) > 0 && len(k) <= 32
	for i := 0; ok && i < len(k); i++ {
		c := k[i]
		ok = c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_'
	}
	if !ok {
		return "(name not shown)"
	}
	return `"` + k + `"`
}

// noQuery refuses any query parameter, naming it.
func noQuery(r *http.Request) error {
	_, err := queryParams(r)
	return err
}
