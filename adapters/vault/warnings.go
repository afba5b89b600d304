package vault

import (
	"log/slog"
	"slices"
	"sync"
	"time"
)

// Vault answers some requests that succeed with warnings, which vault/api
// returns in Secret.Warnings and nothing else looks at. The one that
// matters most: a token created with a policy that does not exist (a typo
// in a grant's policies, a policy not written yet) gets the warning
// `Policy "x" does not exist` (vault/token_store.go, handleCreateCommon),
// and then 403 on every path, while the exchange that minted it succeeded.
// warnLog logs such warnings.

// Bounds of warnLog.
const (
	// warnEvery is how often one warning of one operation of one grant is
	// logged: a busy broker minting for a misconfigured grant logs it once
	// per interval, not once per exchange.
	warnEvery = 10 * time.Minute
	// maxWarnKeys bounds the (grant, operation, warning) triples remembered;
	// past it the oldest are forgotten (and may be logged again early).
	maxWarnKeys = 1024
)

// warnKey is one warning of one operation of one grant.
type warnKey struct{ op, grant, warning string }

// warnLog logs the warnings in Vault's answers, each (grant, operation,
// warning) at most once per warnEvery. It never logs a token or a secret:
// only the operation, the grant, the issuance id and Vault's warning text.
type warnLog struct {
	log *slog.Logger
	now func() time.Time

	mu   sync.Mutex
	last map[warnKey]time.Time // when each was last logged
}

func newWarnLog(log *slog.Logger, now func() time.Time) *warnLog {
	if log == nil {
		log = slog.Default()
	}
	return &warnLog{log: log, now: now, last: map[warnKey]time.Time{}}
}

// note logs warnings of Vault's answer to op (e.g. "create token") for the
// grant and issuance, unless logged less than warnEvery ago.
func (w *warnLog) note(op, grant, issuanceID string, warnings []string) {
	if len(warnings) == 0 {
		return
	}
	now := w.now()
	for _, text := range warnings {
		if w.due(warnKey{op, grant, text}, now) {
			w.log.Warn("vault answered with a warning (logged once per grant and warning every "+warnEvery.String()+")",
				slog.String("op", op), slog.String("grant", grant), slog.String("issuance_id", issuanceID),
				slog.String("vault_warning", text))
		}
	}
}

// noteKey logs warnings of Vault's answer to op on a transit key (e.g.
// "read transit key"; key is <mount>/keys/<name>), each (operation, key,
// warning) at most once per warnEvery, as note does for a grant. A nil w
// logs nothing.
func (w *warnLog) noteKey(op, key string, warnings []string) {
	if w == nil || len(warnings) == 0 {
		return
	}
	now := w.now()
	for _, text := range warnings {
		// "key:" keeps a key apart from a grant of the same name.
		if w.due(warnKey{op, "key:" + key, text}, now) {
			w.log.Warn("vault answered with a warning (logged once per transit key and warning every "+warnEvery.String()+")",
				slog.String("op", op), slog.String("transit_key", key), slog.String("vault_warning", text))
		}
	}
}

// due reports whether k is to be logged at now, and if so records it.
func (w *warnLog) due(k warnKey, now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	last, seen := w.last[k]
	due := !seen || now.Sub(last) >= warnEvery || now.Before(last)
	if due {
		if !seen && len(w.last) >= maxWarnKeys {
			w.forgetOldest()
		}
		w.last[k] = now
	}
	return due
}

// forgetOldest drops the oldest half of the remembered warnings. w.mu is held.
func (w *warnLog) forgetOldest() {
	var cut time.Time
	times := make([]time.Time, 0, len(w.last))
	for _, t := range w.last {
		times = append(times, t)
	}
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	cut = times[len(times)/2]
	for k, t := range w.last {
		if !t.After(cut) {
			delete(w.last, k)
		}
	}
}
