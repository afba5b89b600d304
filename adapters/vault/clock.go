package vault

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker"
)

// Clock skew between the broker and Vault (issue #5, "Time"): audit times
// are the broker's, credential expiries are Vault's; an auditor matching the
// two logs needs them to agree.

// Clock watch defaults.
const (
	DefaultClockInterval  = 5 * time.Minute
	DefaultClockThreshold = 2 * time.Second
	clockTimeout          = 5 * time.Second
)

// ClockOffset asks Vault for its time and returns Vault's clock minus the
// local one. It reads the Date header of GET sys/health (no token needed;
// standby, sealed and uninitialised nodes answer too). Date has a one-second
// resolution, so the reading is Date + 0.5 s compared with the midpoint of
// the request: the result is within about ±0.5 s plus half the round trip.
func ClockOffset(ctx context.Context, c *vaultapi.Client, now func() time.Time) (time.Duration, error) {
	if c == nil {
		return 0, broker.Unavailable(ReasonConfig, retryMisconfig, errors.New("vault clock: no client"))
	}
	if now == nil {
		now = time.Now
	}
	ctx, cancel := context.WithTimeout(ctx, clockTimeout)
	defer cancel()
	sent := now()
	resp, err := c.Logical().ReadRawWithDataWithContext(ctx, "sys/health", map[string][]string{
		"standbyok": {"true"}, "perfstandbyok": {"true"}, "sealedcode": {"200"}, "uninitcode": {"200"},
	})
	received := now()
	if resp != nil {
		defer resp.Body.Close()
	}
	if resp == nil || resp.Response == nil {
		if err == nil {
			err = errors.New("no response")
		}
		return 0, translate("clock", err)
	}
	date := resp.Header.Get("Date")
	if date == "" {
		return 0, broker.Unavailable(ReasonBadResponse, retryOutage, errors.New("vault clock: no Date header"))
	}
	vt, perr := http.ParseTime(date)
	if perr != nil {
		return 0, broker.Unavailable(ReasonBadResponse, retryOutage, fmt.Errorf("vault clock: bad Date header: %w", perr))
	}
	mid := sent.Add(received.Sub(sent) / 2)
	return vt.Add(500 * time.Millisecond).Sub(mid), nil
}

// ClockWatchOptions configure a ClockWatch.
type ClockWatchOptions struct {
	Client *vaultapi.Client // required
	// Interval between checks (default DefaultClockInterval).
	Interval time.Duration
	// Threshold above which |offset| is a skew (default
	// DefaultClockThreshold).
	Threshold time.Duration
	// OnSkew is called when |offset| exceeds Threshold (required): record
	// the clock_skew audit event there.
	OnSkew func(ctx context.Context, offset time.Duration)
	// OnMeasure, optional, is called with every successful reading (for the
	// keytrail_clock_skew_seconds gauge).
	OnMeasure func(offset time.Duration)
	// Now is the clock; default time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// ClockWatch compares the local clock with Vault's every Interval.
type ClockWatch struct {
	o ClockWatchOptions
}

// NewClockWatch validates o and returns a ClockWatch.
func NewClockWatch(o ClockWatchOptions) (*ClockWatch, error) {
	var errs []error
	if o.Client == nil {
		errs = append(errs, errors.New("vault clock: Client is required"))
	}
	if o.OnSkew == nil {
		errs = append(errs, errors.New("vault clock: OnSkew is required"))
	}
	if o.Interval < 0 || o.Threshold < 0 {
		errs = append(errs, errors.New("vault clock: Interval and Threshold must not be negative"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if o.Interval == 0 {
		o.Interval = DefaultClockInterval
	}
	if o.Threshold == 0 {
		o.Threshold = DefaultClockThreshold
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &ClockWatch{o: o}, nil
}

// Check reads the offset once, reports it (OnMeasure) and calls OnSkew
// when it exceeds the threshold. It returns the offset.
func (w *ClockWatch) Check(ctx context.Context) (time.Duration, error) {
	off, err := ClockOffset(ctx, w.o.Client, w.o.Now)
	if err != nil {
		return 0, err
	}
	if w.o.OnMeasure != nil {
		w.o.OnMeasure(off)
	}
	if off > w.o.Threshold || off < -w.o.Threshold {
		w.o.Logger.LogAttrs(ctx, slog.LevelWarn, "clock skew between keytrail and vault",
			slog.Duration("offset", off), slog.Duration("threshold", w.o.Threshold))
		w.o.OnSkew(ctx, off)
	}
	return off, nil
}

// Run checks at once and then every Interval until ctx ends. A failed
// reading is logged and retried at the next tick. It returns nil when ctx
// ends.
func (w *ClockWatch) Run(ctx context.Context) error {
	t := time.NewTicker(w.o.Interval)
	defer t.Stop()
	for {
		if _, err := w.Check(ctx); err != nil && ctx.Err() == nil {
			w.o.Logger.LogAttrs(ctx, slog.LevelWarn, "vault clock check failed", slog.String("error", err.Error()))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
