package client

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestFiveHundredWithoutRequestIDIsNotTheBroker: every answer of the
// broker carries X-Request-Id; a 5xx without it comes from something in
// front of it (an ingress, a load balancer) and read 'keytrail broker: 502:
// Bad Gateway' as if the broker had failed. It is marked NotBroker now and
// says so, still retried; the broker's own 5xx is not marked.
func TestFiveHundredWithoutRequestIDIsNotTheBroker(t *testing.T) {
	ingress := answering(t, http.StatusBadGateway, map[string]string{"Retry-After": "4"})
	err := exchangeErr(t, ingress.URL, nil)
	var be *Error
	if !errors.As(err, &be) || !be.NotBroker || !IsTransient(err) {
		t.Fatalf("an ingress's 502 = %#v, want a transient *Error with NotBroker", err)
	}
	if want := "keytrail broker: 502: Bad Gateway (from something in front of the broker, not the broker: no X-Request-Id)"; err.Error() != want {
		t.Errorf("Error() = %q, want %q", err, want)
	}
	if !strings.Contains(be.Hint(), "something in front of the broker") {
		t.Errorf("Hint() = %q, want it to name what answered", be.Hint())
	}
	ingress503 := answering(t, http.StatusServiceUnavailable, map[string]string{"Retry-After": "4"})
	if err := exchangeErr(t, ingress503.URL, nil); RetryAfterOf(err) != 4*time.Second {
		t.Errorf("an ingress's 503 with Retry-After 4: RetryAfterOf = %v, want 4s (%v)", RetryAfterOf(err), err)
	}
	broker := newFakeBroker(t, errReply(502, "", ""))
	err = exchangeErr(t, broker.srv.URL, nil)
	if !errors.As(err, &be) || be.NotBroker {
		t.Errorf("the broker's own 502 = %#v, want it not marked NotBroker", err)
	}
}
