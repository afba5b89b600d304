package httpapi

import (
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// tokenResponse is the RFC 8693 response with keytrail's fields (SPEC).
type tokenResponse struct {
	AccessToken     string         `json:"access_token"`
	IssuedTokenType string         `json:"issued_token_type"`
	TokenType       string         `json:"token_type"`
	ExpiresIn       int64          `json:"expires_in"`
	IssuanceID      string         `json:"issuance_id"`
	Workload        string         `json:"workload"`
	Owner           string         `json:"owner"`
	SessionID       string         `json:"session_id"`
	Grant           string         `json:"grant"`
	Kind            string         `json:"kind"`
	Credential      map[string]any `json:"credential,omitempty"`
}

// tokenParams are the parameters /v1/token accepts; anything else is ignored
// as RFC 6749 §3.2 asks, but none may repeat. Their values are read into an
// array indexed by the constants below (a map per request cost three
// allocations and ten hashed insertions and look-ups).
var tokenParams = [...]string{
	pGrantType: "grant_type", pSubjectToken: "subject_token", pSubjectTokenType: "subject_token_type",
	pAudience: "audience", pActorToken: "actor_token", pActorTokenType: "actor_token_type",
	pTTL: "ttl", pScope: "scope", pResource: "resource", pRequestedTokenType: "requested_token_type",
}

// Indexes of tokenParams.
const (
	pGrantType = iota
	pSubjectToken
	pSubjectTokenType
	pAudience
	pActorToken
	pActorTokenType
	pTTL
	pScope
	pResource
	pRequestedTokenType
	nTokenParams
)

// maxTTLSeconds bounds the ttl parameter before the grant caps it.
const maxTTLSeconds = 366 * 24 * 3600

// formType is the only body /v1/token and /v1/introspect accept.
const formType = "application/x-www-form-urlencoded"

func (s *Server) readForm(w http.ResponseWriter, r *http.Request) (url.Values, error) {
	// The usual header, exactly formType, is what mime.ParseMediaType
	// would make of it (it allocates a parameter map per call).
	if ct := r.Header.Get("Content-Type"); ct != formType {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != formType {
			return nil, broker.Errorf(broker.ErrInvalidRequest, "bad_content_type", "body must be application/x-www-form-urlencoded", err)
		}
	}
	r.Body = http.MaxBytesReader(w, r.Body, s.o.MaxBodyBytes)
	if err := parseForm(r); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, broker.Errorf(broker.ErrInvalidRequest, "body_too_large", "request body too large", err)
		}
		return nil, broker.Errorf(broker.ErrInvalidRequest, "bad_form", "malformed form body", err)
	}
	if len(r.URL.RawQuery) > 0 {
		return nil, broker.Errorf(broker.ErrInvalidRequest, "query_params", "parameters must be sent in the body, not the URL", nil)
	}
	return r.PostForm, nil
}

// parseForm is r.ParseForm for a request whose Content-Type readForm
// checked and whose body it bounded. A POST without a query, the usual
// request, gets r.PostForm as ParseForm makes it (the body read whole, as
// ParseForm reads a MaxBytesReader's, then url.ParseQuery), without
// ParseForm's second look at the Content-Type and its merged copy of every
// value into r.Form (left nil; FormValue would make it). Anything else goes
// through ParseForm.
func parseForm(r *http.Request) error {
	if r.Method != http.MethodPost || r.URL.RawQuery != "" || r.PostForm != nil || r.Form != nil {
		return r.ParseForm()
	}
	b, err := io.ReadAll(r.Body)
	if err != nil {
		r.PostForm = make(url.Values)
		return err
	}
	r.PostForm, err = url.ParseQuery(string(b))
	return err
}

func single(form url.Values, name string) (string, error) {
	v := form[name]
	switch len(v) {
	case 0:
		return "", nil
	case 1:
		return v[0], nil
	default:
		return "", broker.Errorf(broker.ErrInvalidRequest, "repeated_param", "parameter "+name+" must not repeat", nil)
	}
}

func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	res, grant, err := s.exchange(w, r)
	if err != nil {
		kind := ""
		if g, ok := s.o.Service.Policy().Grant(grant); ok {
			kind = g.Kind
		} else {
			grant = "" // caller-controlled: keep label cardinality bounded
		}
		s.metrics.ObserveExchange(grant, kind, err, time.Since(start))
		if broker.AsError(err).Reason == broker.OrphanClientGone {
			// The caller went away (Exchange checked r's context): not a
			// backend failure. Nobody reads an answer; its 499 (nginx's
			// "client closed request", as the deny event's and the
			// proxy's) is for the access log.
			s.log.LogAttrs(r.Context(), slog.LevelInfo, "client went away before the credential was handed out",
				slog.String("request_id", RequestID(r)))
			w.WriteHeader(broker.StatusClientClosedRequest)
			return
		}
		s.WriteError(w, r, err)
		return
	}
	s.metrics.ObserveExchange(res.Issuance.Grant, res.Issuance.Kind, nil, time.Since(start))
	writeJSON(w, http.StatusOK, tokenResponse{
		AccessToken:     res.AccessToken,
		IssuedTokenType: broker.TokenTypeAccessToken,
		TokenType:       "Bearer",
		ExpiresIn:       res.ExpiresIn,
		IssuanceID:      res.Issuance.ID,
		Workload:        res.Issuance.Workload,
		Owner:           res.Issuance.Owner,
		SessionID:       res.Issuance.SessionID,
		Grant:           res.Issuance.Grant,
		Kind:            res.Issuance.Kind,
		Credential:      res.Fields,
	})
}

func (s *Server) exchange(w http.ResponseWriter, r *http.Request) (*broker.ExchangeResult, string, error) {
	grant := ""
	// Requests refused before they reach the Service are denials too,
	// of a caller not authenticated (RefusalLimits).
	reject := func(err error) (*broker.ExchangeResult, string, error) {
		return nil, grant, s.o.Service.RefuseUnauthenticated(r.Context(), RequestID(r), s.Source(r), grant, err)
	}
	form, err := s.readForm(w, r)
	if err != nil {
		return reject(err)
	}
	var p [nTokenParams]string
	for i, name := range tokenParams {
		v, err := single(form, name)
		if err != nil {
			return reject(err)
		}
		p[i] = v
	}
	grant = p[pAudience]
	switch p[pGrantType] {
	case broker.GrantTypeTokenExchange:
	case "":
		return reject(broker.Errorf(broker.ErrInvalidRequest, "missing_grant_type", "grant_type is required", nil))
	default:
		return reject(&broker.Error{Kind: broker.ErrInvalidRequest, Code: "unsupported_grant_type", Reason: "unsupported_grant_type", Safe: "only token exchange is supported"})
	}
	if !validTokenType(p[pSubjectTokenType]) {
		return reject(broker.Errorf(broker.ErrInvalidRequest, "bad_subject_token_type", "subject_token_type must be "+broker.TokenTypeJWT+" or "+broker.TokenTypeIDToken, nil))
	}
	if p[pActorToken] != "" && !validTokenType(p[pActorTokenType]) {
		return reject(broker.Errorf(broker.ErrInvalidRequest, "bad_actor_token_type", "actor_token_type must be a JWT token type", nil))
	}
	if p[pActorToken] == "" && p[pActorTokenType] != "" {
		return reject(broker.Errorf(broker.ErrInvalidRequest, "actor_token_type_without_token", "actor_token_type given without actor_token", nil))
	}
	if rt := p[pRequestedTokenType]; rt != "" && rt != broker.TokenTypeAccessToken && rt != broker.TokenTypeJWT {
		return reject(broker.Errorf(broker.ErrInvalidRequest, "bad_requested_token_type", "requested_token_type is not supported", nil))
	}
	if res := p[pResource]; res != "" {
		if u, err := url.Parse(res); err != nil || !u.IsAbs() || u.Fragment != "" {
			return reject(&broker.Error{Kind: broker.ErrInvalidTarget, Reason: "bad_resource", Safe: "resource must be an absolute URI"})
		}
	}
	var ttl time.Duration
	if t := strings.TrimSpace(p[pTTL]); t != "" {
		n, err := strconv.ParseInt(t, 10, 64)
		if errors.Is(err, strconv.ErrRange) && n > 0 {
			err = nil // beyond int64: capped like any other ttl above the grant's
		}
		if err != nil || n <= 0 {
			return reject(broker.Errorf(broker.ErrInvalidRequest, "bad_ttl", "ttl must be a positive number of seconds", nil))
		}
		// The grant caps it (SPEC); bounded here only so that it fits a
		// time.Duration.
		ttl = time.Duration(min(n, maxTTLSeconds)) * time.Second
	}
	res, err := s.o.Service.Exchange(r.Context(), broker.ExchangeRequest{
		SubjectToken: p[pSubjectToken],
		ActorToken:   p[pActorToken],
		Grant:        grant,
		TTL:          ttl,
		Source:       s.Source(r),
		RequestID:    RequestID(r),
	})
	return res, grant, err
}

func validTokenType(t string) bool {
	return t == broker.TokenTypeJWT || t == broker.TokenTypeIDToken
}
