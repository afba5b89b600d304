package httpapi

import (
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// formBodies are form bodies readForm must read as r.ParseForm does:
// ordinary, repeated, escaped, malformed, empty and too large.
var formBodies = []string{
	"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=a.b.c&audience=deploy-vault",
	"audience=a&audience=b",
	"a=%zz&b=1",
	"a=1;b=2",
	"=x&y=&&z",
	"",
	"k=" + strings.Repeat("v", 200),
}

func newFormRequest(method, target, ct, body string) *http.Request {
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	if ct != "" {
		r.Header.Set("Content-Type", ct)
	}
	return r
}

// readForm reads a POST body without a query as r.ParseForm did (the
// values, the error, the body bounded by MaxBodyBytes), and a request it
// does not take that way through r.ParseForm itself.
func TestReadFormIsParseForm(t *testing.T) {
	s := &Server{o: Options{MaxBodyBytes: 100}}
	for _, method := range []string{http.MethodPost, http.MethodPut} {
		for _, target := range []string{"/v1/token", "/v1/token?x=1", "/v1/token?%zz"} {
			for _, ct := range []string{"application/x-www-form-urlencoded", "Application/X-WWW-Form-Urlencoded; charset=utf-8"} {
				for _, body := range formBodies {
					want := newFormRequest(method, target, ct, body)
					want.Body = http.MaxBytesReader(httptest.NewRecorder(), want.Body, s.o.MaxBodyBytes)
					werr := want.ParseForm()

					r := newFormRequest(method, target, ct, body)
					got, gerr := s.readForm(httptest.NewRecorder(), r)
					name := method + " " + target + " " + ct + " " + body
					switch {
					case werr != nil:
						if gerr == nil || !strings.Contains(gerr.Error(), werr.Error()) {
							t.Errorf("%s: readForm error %v, want one wrapping %v", name, gerr, werr)
						}
					case want.URL.RawQuery != "":
						if gerr == nil || !strings.Contains(gerr.Error(), "query") {
							t.Errorf("%s: readForm error %v, want query_params", name, gerr)
						}
					case gerr != nil:
						t.Errorf("%s: readForm error %v, ParseForm none", name, gerr)
					}
					if !reflect.DeepEqual(r.PostForm, want.PostForm) {
						t.Errorf("%s: PostForm %v, ParseForm's %v", name, r.PostForm, want.PostForm)
					}
					if gerr == nil && !reflect.DeepEqual(got, want.PostForm) {
						t.Errorf("%s: readForm = %v, ParseForm's %v", name, got, want.PostForm)
					}
				}
			}
		}
	}
	// Content-Type repeated: the first is the one both read.
	for _, cts := range [][]string{{formType, "application/json"}, {"application/json", formType}} {
		r := newFormRequest(http.MethodPost, "/v1/token", "", "a=1")
		r.Header["Content-Type"] = cts
		want := newFormRequest(http.MethodPost, "/v1/token", "", "a=1")
		want.Header["Content-Type"] = cts
		werr := want.ParseForm()
		_, gerr := s.readForm(httptest.NewRecorder(), r)
		if (gerr == nil) != (cts[0] == formType) || !reflect.DeepEqual(r.PostForm, want.PostForm) && gerr == nil {
			t.Errorf("Content-Type %q: readForm error %v, PostForm %v; ParseForm error %v, PostForm %v", cts, gerr, r.PostForm, werr, want.PostForm)
		}
	}
	for _, ct := range []string{"", "text/plain", "application/x-www-form-urlencoded; x", "application/json"} {
		if _, err := s.readForm(httptest.NewRecorder(), newFormRequest(http.MethodPost, "/v1/token", ct, "a=1")); err == nil || !strings.Contains(err.Error(), "bad_content_type") {
			t.Errorf("Content-Type %q: readForm error %v, want bad_content_type", ct, err)
		}
	}
}

// A token request's form is read without ParseForm's second Content-Type
// parse and its copy of every value into r.Form: at least 6 allocations
// fewer than r.ParseForm for a body of 5 parameters.
func TestReadFormAllocs(t *testing.T) {
	s := &Server{o: Options{MaxBodyBytes: 64 << 10}}
	body := "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=a.b.c" +
		"&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&audience=deploy-vault&ttl=60"
	r := newFormRequest(http.MethodPost, "/v1/token", "application/x-www-form-urlencoded", body)
	w := httptest.NewRecorder()
	reset := func() {
		r.PostForm, r.Form = nil, nil
		r.Body = readCloser{strings.NewReader(body)}
	}
	old := testing.AllocsPerRun(100, func() {
		reset()
		r.Body = http.MaxBytesReader(w, r.Body, s.o.MaxBodyBytes)
		if err := r.ParseForm(); err != nil {
			t.Fatal(err)
		}
	})
	got := testing.AllocsPerRun(100, func() {
		reset()
		if _, err := s.readForm(w, r); err != nil {
			t.Fatal(err)
		}
	})
	if got > old-6 {
		t.Errorf("readForm: %v allocations, r.ParseForm %v: want at least 6 fewer", got, old)
	} else {
		t.Logf("readForm: %v allocations, r.ParseForm %v", got, old)
	}
}

type readCloser struct{ *strings.Reader }

func (readCloser) Close() error { return nil }

// writeJSON's headers are what Header.Set of each makes, a later Add
// leaves the other responses' values alone, and setting them costs one
// allocation instead of four.
func TestWriteJSONHeaders(t *testing.T) {
	want := http.Header{}
	want.Set("Content-Type", "application/json")
	want.Set("Cache-Control", "no-store")
	want.Set("Pragma", "no-cache")
	want.Set("X-Content-Type-Options", "nosniff")
	w := httptest.NewRecorder()
	writeJSON(w, http.StatusOK, map[string]int{"a": 1})
	if !reflect.DeepEqual(w.Header(), want) {
		t.Fatalf("headers %v, want %v", w.Header(), want)
	}
	if w.Body.String() != "{\"a\":1}\n" {
		t.Errorf("body %q", w.Body.String())
	}
	w2 := httptest.NewRecorder()
	writeJSON(w2, http.StatusOK, 1)
	w2.Header().Add("Pragma", "x")
	w2.Header().Add("Content-Type", "y")
	if !reflect.DeepEqual(w.Header(), want) {
		t.Errorf("another response's Add changed these headers: %v", w.Header())
	}
	// Nor does an Add to one of them on the same response touch the
	// others (each slice's capacity is its length: the append copies).
	w3 := httptest.NewRecorder()
	writeJSON(w3, http.StatusOK, 1)
	for _, k := range []string{"Content-Type", "Cache-Control", "Pragma", "X-Content-Type-Options"} {
		w3.Header().Add(k, "added")
	}
	for k, v := range want {
		if got := w3.Header()[k]; !reflect.DeepEqual(got, append(slices.Clone(v), "added")) {
			t.Errorf("after an Add to each header: %s = %q, want %q and \"added\"", k, got, v)
		}
	}
	h := http.Header{}
	rw := headerOnly{h}
	n := testing.AllocsPerRun(100, func() {
		clear(h)
		writeJSON(rw, http.StatusNoContent, nil)
	})
	// The encoder and its output are the rest.
	if n > 2 {
		t.Errorf("writeJSON: %v allocations, want at most 2", n)
	}
}

type headerOnly struct{ h http.Header }

func (w headerOnly) Header() http.Header         { return w.h }
func (w headerOnly) Write(b []byte) (int, error) { return len(b), nil }
func (w headerOnly) WriteHeader(int)             {}
