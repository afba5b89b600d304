package proxy

import (
	"context"
	"testing"
)

type otherKey struct{}

// The context of a forwarded request holds its call and is the forward's
// context otherwise: a context derived from it (as net/http's Transport
// derives one per exchange) is cancelled with the forward's context, at
// once, as from a context.WithValue one; that cancellation is how a
// revocation cuts a request in flight (cutRevoked).
func TestCallContextIsCancelledWithTheForward(t *testing.T) {
	parent, cancel := context.WithCancel(context.WithValue(context.Background(), otherKey{}, "v"))
	c := &call{}
	c.ctx = callCtx{Context: parent, c: c}
	derived, cancelDerived := context.WithCancelCause(&c.ctx)
	defer cancelDerived(nil)
	if callOf(derived) != c {
		t.Fatal("callOf does not find the call")
	}
	if got := derived.Value(otherKey{}); got != "v" {
		t.Fatalf("Value of another key = %v, want the forward context's", got)
	}
	if derived.Err() != nil {
		t.Fatal("cancelled before the forward was")
	}
	cancel()
	// Synchronously: the derived context is registered with the
	// forward's own (no goroutine relaying the cancellation).
	if derived.Err() != context.Canceled || c.ctx.Err() != context.Canceled {
		t.Fatalf("after the forward's cancel: derived %v, call context %v; want both context.Canceled", derived.Err(), c.ctx.Err())
	}
}
