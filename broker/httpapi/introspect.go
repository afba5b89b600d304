package httpapi

import (
	"net/http"
	"strings"

	"github.com/keytrail/keytrail/broker"
)

// BearerToken returns the token of an "Authorization: Bearer" header.
func BearerToken(r *http.Request, header string) string {
	// The names the broker asks for are canonical: looked up as they are
	// first, since Header.Get would make them canonical again.
	vs, ok := r.Header[header]
	if !ok {
		vs = r.Header.Values(header)
	}
	var v string
	if len(vs) > 0 {
		v = vs[0]
	}
	if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
		return strings.TrimSpace(v[7:])
	}
	return ""
}

func (s *Server) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	// Refused before the Service, as /v1/token's malformed requests: a
	// deny event each, within the source's RefusalLimits.
	form, err := s.readForm(w, r)
	if err != nil {
		s.refuse(w, r, "introspect", s.o.Service.RefuseUnauthenticated(r.Context(), RequestID(r), s.Source(r), "", err))
		return
	}
	tok, err := single(form, "token")
	if err != nil {
		s.refuse(w, r, "introspect", s.o.Service.RefuseUnauthenticated(r.Context(), RequestID(r), s.Source(r), "", err))
		return
	}
	res, err := s.o.Service.Introspect(r.Context(), broker.IntrospectRequest{
		CallerToken: BearerToken(r, "Authorization"),
		Token:       tok,
		Source:      s.Source(r),
		RequestID:   RequestID(r),
	})
	if err != nil {
		s.refuse(w, r, "introspect", err)
		return
	}
	if !res.Active {
		writeJSON(w, http.StatusOK, map[string]any{"active": false})
		return
	}
	is := res.Issuance
	body := map[string]any{
		"active":     true,
		"sub":        is.Workload,
		"owner":      is.Owner,
		"sid":        is.SessionID,
		"jti":        is.ID,
		"grant":      is.Grant,
		"kind":       is.Kind,
		"iat":        is.IssuedAt.Unix(),
		"exp":        is.ExpiresAt.Unix(),
		"iss":        s.o.PublicURL,
		"token_type": "Bearer",
	}
	if is.Audience != "" {
		// A broker JWT's aud, as signed (RFC 7662 §2.2); other kinds have none.
		body["aud"] = is.Audience
	}
	if len(is.Act) > 0 {
		// The party the workload acts for (the actor token's; one level
		// is recorded). Not as act: RFC 8693 §4.1's act names the acting
		// party, here the workload (sub) itself, and a resource server
		// reading act by the RFC would take the party acted for for the
		// actor (docs/SPEC-ADDITIONS.md "Delegation").
		body["acting_for"] = map[string]string{"iss": is.Act[0].Iss, "sub": is.Act[0].Sub}
	}
	writeJSON(w, http.StatusOK, body)
}

// refuse counts a refused request to endpoint in keytrail_denies_total (so
// that a flood of bad tokens shows by reason) and writes the error.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, endpoint string, err error) {
	s.metrics.ObserveRefusal(endpoint, err)
	s.WriteError(w, r, err)
}
