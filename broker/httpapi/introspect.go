package httpapi

import (
	"net/http"
	"strings"

	"github.com/keytrail/keytrail/broker"
)

// BearerToken returns the token of an "Authorization: Bearer" header.
func BearerToken(r *http.Request, header string) string {
	v := r.Header.Get(header)
	if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
		return strings.TrimSpace(v[7:])
	}
	return ""
}

func (s *Server) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	form, err := s.readForm(w, r)
	if err != nil {
		s.WriteError(w, r, err)
		return
	}
	tok, err := single(form, "token")
	if err != nil {
		s.WriteError(w, r, err)
		return
	}
	res, err := s.o.Service.Introspect(r.Context(), broker.IntrospectRequest{
		CallerToken: BearerToken(r, "Authorization"),
		Token:       tok,
		Source:      s.Source(r),
		RequestID:   RequestID(r),
	})
	if err != nil {
		s.WriteError(w, r, err)
		return
	}
	if !res.Active {
		writeJSON(w, http.StatusOK, map[string]any{"active": false})
		return
	}
	is := res.Issuance
	writeJSON(w, http.StatusOK, map[string]any{
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
	})
}
