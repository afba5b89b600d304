package httpapi

import (
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// ReadyStarting is /readyz's error while the broker starts (Starting).
const ReadyStarting = "starting"

// ReasonStarting is the reason of the 503 every other route answers while
// the broker starts.
const ReasonStarting = "starting"

// Starting is the handler of a broker whose listener is bound but that is
// not serving yet (its Vault login, store, audit log and start event still
// to come): GET /healthz answers 200 (the process is alive), GET /readyz
// 503 "starting", and every other route 503 temporarily_unavailable
// (reason starting) with Retry-After: 1, at once (a method /healthz or
// /readyz does not serve gets 405 with Allow, as once serving), in the OAuth error shape
// with a request id, as a sealed or standby Vault answers; each logged at
// INFO (the access line and a "request failed" line naming the reason),
// the expected state of a start-up, not a WARN. Nothing reaches
// the broker's handlers and nothing is audited: no request is served
// before the start event is durable. logger and trusted are the server's
// (its access-log lines and their source addresses).
func Starting(logger *slog.Logger, trusted []netip.Prefix) http.Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{o: Options{Logger: logger, TrustedProxies: trusted}, log: logger}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.handleHealthz)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "error": ReadyStarting})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// A method /healthz or /readyz does not serve is answered as the
		// broker's routes will (Routes' catch-all): 405 with Allow, not a
		// 503 telling the client to retry what never succeeds.
		if allow := allowedMethods(mux, r); len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			s.WriteError(w, r, &broker.Error{Kind: broker.ErrMethodNotAllowed, Reason: "method_not_allowed", Safe: "method not allowed; see the Allow header"})
			return
		}
		// At INFO: every start-up answers so until it serves, and clients
		// come back each second (Retry-After); a WARN per answer would
		// flood the log of a start-up with many clients.
		s.writeError(w, r, &broker.Error{Kind: broker.ErrUnavailable, Reason: ReasonStarting,
			Safe: "the broker is starting; retry shortly", RetryAfter: time.Second}, 0, true)
	})
	return s.middleware(mux)
}
