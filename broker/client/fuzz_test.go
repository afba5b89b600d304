package client

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

func FuzzParseRetryAfter(f *testing.F) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, s := range []string{"3", " 12 ", "86400", "99999999999999999999", "", "0", "-5", "1.5", "soon",
		now.Add(90 * time.Second).Format(http.TimeFormat), now.Add(-time.Minute).Format(http.TimeFormat)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d := ParseRetryAfter(v, now)
		if d < 0 || d > MaxRetryAfter {
			t.Fatalf("ParseRetryAfter(%q) = %v, want within [0, %v]", v, d, MaxRetryAfter)
		}
	})
}

func FuzzParseResponse(f *testing.F) {
	seeds := []struct {
		status int
		body   string
		ra     string
	}{
		{200, okBody, ""},
		{200, `{"access_token":`, ""},
		{200, `{"expires_in":5}`, ""},
		{200, `{"access_token":"x","expires_in":-1}`, ""},
		{401, `{"error":"invalid_grant","error_description":"safe","request_id":"r"}`, ""},
		{429, `{"error":"slow_down"}`, "3"},
		{503, `{"error":"temporarily_unavailable"}`, "Wed, 21 Oct 2015 07:28:00 GMT"},
		{502, `<html>`, ""},
	}
	for _, s := range seeds {
		f.Add(s.status, s.body, s.ra)
	}
	sent := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, status int, body, ra string) {
		if status < 100 || status > 599 {
			return
		}
		h := http.Header{"Content-Type": {"application/json"}, "Retry-After": {ra}}
		c, err := parseResponse(status, h, []byte(body), sent)
		if err == nil {
			if status != 200 || c.AccessToken == "" || c.ExpiresAt.Before(c.IssuedAt) {
				t.Fatalf("parseResponse(%d, %q) = %+v, an invalid credential", status, body, c)
			}
			return
		}
		var be *Error
		if status != 200 && (!errors.As(err, &be) || be.Status != status || be.RetryAfter < 0 || be.RetryAfter > MaxRetryAfter) {
			t.Fatalf("parseResponse(%d) = %v, want *Error with that status", status, err)
		}
		// A secret in a 200 body never leaks into the error.
		if status == 200 && len(body) > 8 && strings.Contains(err.Error(), body) {
			t.Fatalf("error %q repeats the body", err)
		}
	})
}
