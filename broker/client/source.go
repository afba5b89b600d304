package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// Source defaults.
const (
	DefaultRenewAt    = 2.0 / 3.0
	DefaultJitter     = 0.1
	DefaultMinBackoff = 500 * time.Millisecond
	DefaultMaxBackoff = 30 * time.Second
	minRenewDelay     = time.Second
)

// SourceOptions configure a Source.
type SourceOptions struct {
	Client   *Client
	Grant    string
	Exchange ExchangeOptions

	// RenewAt is the fraction of the TTL after which the credential is
	// re-exchanged (default 2/3); Jitter spreads it uniformly by ± that
	// fraction of the TTL (default 0.1). RenewAt±Jitter must lie in (0, 1).
	RenewAt float64
	Jitter  float64
	// MinBackoff and MaxBackoff bound the exponential backoff after a
	// transient failure without Retry-After (defaults 500ms and 30s). A
	// Retry-After from the broker is always honoured, even above MaxBackoff
	// (up to MaxRetryAfter).
	MinBackoff time.Duration
	MaxBackoff time.Duration

	// Now, Sleep and Rand make the schedule testable. Sleep MUST return
	// ctx.Err() when ctx ends first. Rand returns a value in [0, 1).
	Now   func() time.Time
	Sleep func(ctx context.Context, d time.Duration) error
	Rand  func() float64

	// OnCredential, when set, is called with every new credential before it
	// is published; an error stops Fetch/Run and is returned from it.
	OnCredential func(*Credential) error
	// OnRetry, when set, is called after each transient failure with the
	// wait before the next attempt.
	OnRetry func(err error, wait time.Duration)
	Logger  *slog.Logger
}

// Source keeps one grant's credential fresh. Fetch and Run must not be
// called concurrently; Current and Credential are safe from any goroutine.
type Source struct {
	o SourceOptions

	mu      sync.Mutex
	cur     *Credential
	ended   bool
	endErr  error
	changed chan struct{} // closed and replaced on every change
}

// NewSource validates o and returns a Source.
func NewSource(o SourceOptions) (*Source, error) {
	var errs []error
	if o.Client == nil {
		errs = append(errs, errors.New("client: SourceOptions.Client is required"))
	}
	if o.Grant == "" {
		errs = append(errs, errors.New("client: SourceOptions.Grant is required"))
	}
	if o.Exchange.Identity == nil {
		errs = append(errs, errors.New("client: SourceOptions.Exchange.Identity is required"))
	}
	if o.RenewAt == 0 {
		o.RenewAt = DefaultRenewAt
	}
	if o.Jitter == 0 {
		o.Jitter = DefaultJitter
	}
	if o.Jitter < 0 || o.RenewAt-o.Jitter <= 0 || o.RenewAt+o.Jitter >= 1 {
		errs = append(errs, fmt.Errorf("client: RenewAt±Jitter (%v±%v) must lie in (0, 1)", o.RenewAt, o.Jitter))
	}
	if o.MinBackoff == 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.MinBackoff < 0 || o.MaxBackoff < o.MinBackoff {
		errs = append(errs, errors.New("client: need 0 < MinBackoff <= MaxBackoff"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Sleep == nil {
		o.Sleep = sleep
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Source{o: o, changed: make(chan struct{})}, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Grant is the grant this source fetches.
func (s *Source) Grant() string { return s.o.Grant }

// Current returns the last credential obtained (possibly expired: check
// Valid), or nil.
func (s *Source) Current() *Credential {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// Credential returns a credential that is valid now, waiting for one when
// there is none yet. It returns Run's error when Run ended without a valid
// credential, and ctx.Err() when ctx ends first.
func (s *Source) Credential(ctx context.Context) (*Credential, error) {
	for {
		s.mu.Lock()
		cur, ended, endErr, ch := s.cur, s.ended, s.endErr, s.changed
		s.mu.Unlock()
		if cur.Valid(s.o.Now()) {
			return cur, nil
		}
		if ended {
			if endErr == nil {
				endErr = errors.New("client: source stopped")
			}
			return nil, endErr
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-ch:
		}
	}
}

func (s *Source) publish(c *Credential) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur = c
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Source) end(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ended, s.endErr = true, err
	close(s.changed)
	s.changed = make(chan struct{})
}

// Fetch exchanges until it gets a credential, retrying transient failures
// with backoff (never before a Retry-After), and publishes it. It returns a
// permanent error at once, and ctx's error when ctx ends first (naming the
// last transient failure, if any; errors.Is(err, ctx.Err()) holds).
func (s *Source) Fetch(ctx context.Context) (*Credential, error) {
	var last error
	for attempt := 0; ; attempt++ {
		c, err := s.o.Client.Exchange(ctx, s.o.Grant, s.o.Exchange)
		if err == nil {
			if s.o.OnCredential != nil {
				if err := s.o.OnCredential(c); err != nil {
					return nil, err
				}
			}
			s.publish(c)
			s.o.Logger.LogAttrs(ctx, slog.LevelInfo, "credential", slog.Any("credential", c))
			return c, nil
		}
		if ctx.Err() != nil {
			var ie *IdentityError
			if errors.As(err, &ie) {
				// The identity token's read was cut short (a pipe
				// nobody wrote to): that is what failed last.
				last = err
			}
			return nil, gaveUp(ctx.Err(), last)
		}
		if !IsTransient(err) {
			return nil, err
		}
		last = err
		wait := s.backoff(attempt, err)
		s.o.Logger.LogAttrs(ctx, slog.LevelWarn, "exchange failed; retrying",
			slog.String("grant", s.o.Grant), slog.String("error", err.Error()), slog.Duration("wait", wait))
		if s.o.OnRetry != nil {
			s.o.OnRetry(err, wait)
		}
		if err := s.o.Sleep(ctx, wait); err != nil {
			return nil, gaveUp(err, last)
		}
	}
}

// gaveUp is ctxErr, saying what failed last before it.
func gaveUp(ctxErr, last error) error {
	if last == nil {
		return ctxErr
	}
	return &gaveUpError{ctxErr, last}
}

type gaveUpError struct{ ctxErr, last error }

func (e *gaveUpError) Error() string {
	return e.ctxErr.Error() + " (last failure: " + e.last.Error() + ")"
}
func (e *gaveUpError) Unwrap() error { return e.ctxErr }

// LastFailure returns the last transient failure before Fetch's context
// ended, when err is such an end of Fetch; else nil.
func LastFailure(err error) error {
	var g *gaveUpError
	if errors.As(err, &g) {
		return g.last
	}
	return nil
}

// Run keeps the credential fresh until ctx ends (then it returns nil) or a
// permanent error or an OnCredential error occurs (returned). When the
// source holds no credential yet, it fetches one first. The last credential
// stays available through Current and Credential while renewals fail
// transiently.
func (s *Source) Run(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			s.end(err)
		} else {
			s.end(context.Cause(ctx))
		}
	}()
	cur := s.Current()
	for {
		if cur == nil {
			cur, err = s.Fetch(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
		if err := s.o.Sleep(ctx, s.renewDelay(cur)); err != nil {
			return nil
		}
		cur = nil
	}
}

// renewDelay is the wait from now until c should be renewed: at
// RenewAt±Jitter of its TTL after it was issued, and at least
// minRenewDelay: every renewal is a new issuance (and, under exec --watch,
// a restart of the program), so a tiny TTL or a slow exchange must not
// make it a loop.
func (s *Source) renewDelay(c *Credential) time.Duration {
	frac := s.o.RenewAt + s.o.Jitter*(2*s.o.Rand()-1)
	at := c.IssuedAt.Add(time.Duration(float64(c.TTL()) * frac))
	d := at.Sub(s.o.Now())
	if d < minRenewDelay {
		d = minRenewDelay
	}
	return d
}

// backoff is the wait after the attempt-th consecutive transient failure:
// the broker's Retry-After plus up to as much again (spreading a herd of
// clients told the same time over one more Retry-After, so that they come
// back at the rate the broker can take), or else exponential from MinBackoff, capped
// at MaxBackoff, with equal jitter (between half and all of the step).
func (s *Source) backoff(attempt int, err error) time.Duration {
	if ra := RetryAfterOf(err); ra > 0 {
		return ra + time.Duration(s.o.Rand()*float64(ra))
	}
	step := s.o.MaxBackoff
	if attempt < 30 {
		if d := s.o.MinBackoff << attempt; d > 0 && d < step {
			step = d
		}
	}
	return step/2 + time.Duration(s.o.Rand()*float64(step)/2)
}
