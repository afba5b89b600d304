package redisstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/adapters/redisstore"
	"github.com/keytrail/keytrail/adapters/storetest"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/e2e/harness"
)

// dropProxy forwards TCP connections to a Redis. Armed, it forwards the next
// script call (EVAL or EVALSHA; or the command it matches, see
// startDropProxyFor) whose reply is not an error, reads the reply, runs
// hook, and closes the client's connection without passing the reply on:
// the command ran, its reply is lost, and go-redis sends it again on a new
// connection (if it does).
type dropProxy struct {
	ln     net.Listener
	target string
	match  []byte // the command name it watches, upper case

	mu    sync.Mutex
	hook  func() // armed when set; run once
	evals int    // script calls seen
}

func startDropProxy(t *testing.T, target string) *dropProxy {
	t.Helper()
	return startDropProxyFor(t, target, "EVAL")
}

// startDropProxyFor is a dropProxy that watches the calls whose write
// contains cmd (upper case) instead of script calls.
func startDropProxyFor(t *testing.T, target, cmd string) *dropProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &dropProxy{ln: ln, target: target, match: []byte(cmd)}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *dropProxy) serve(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer server.Close()
	// go-redis waits for each reply here (no pipelining): the reply read
	// while a script call is pending is that call's. The command name
	// comes first, so the read that starts a call names it.
	var pending atomic.Bool
	go func() {
		defer server.Close()
		buf := make([]byte, 64<<10)
		for {
			n, err := client.Read(buf)
			if err != nil {
				return
			}
			if bytes.Contains(bytes.ToUpper(buf[:n]), p.match) {
				p.mu.Lock()
				p.evals++
				p.mu.Unlock()
				pending.Store(true)
			}
			if _, err := server.Write(buf[:n]); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := server.Read(buf)
		if err != nil {
			return
		}
		if pending.Swap(false) && buf[0] != '-' {
			p.mu.Lock()
			hook := p.hook
			p.hook = nil
			p.mu.Unlock()
			if hook != nil {
				hook()
				return // the reply is lost
			}
		}
		if _, err := client.Write(buf[:n]); err != nil {
			return
		}
	}
}

func (p *dropProxy) arm(hook func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hook = hook
}

func (p *dropProxy) scriptCalls() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.evals
}

// ran is what the proxy's hook sent on done. The hook ran before the proxy
// closed the connection, so before the resend: a store call that returned
// after a resend finds it there.
func ran(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	default:
		t.Fatal("the proxy dropped no reply")
		return nil
	}
}

// TestPutIssuanceResentAfterMark: a PutIssuance whose script ran and whose
// reply was lost is sent again by go-redis; a revocation that marked the
// record in between keeps its mark (the resent put used to overwrite it
// with the unrevoked record).
func TestPutIssuanceResentAfterMark(t *testing.T) {
	r := harness.StartRedis(t)
	direct := newStore(t, r, redisstore.Options{Prefix: "{resend}:"})
	p := startDropProxy(t, r.Addr())
	proxied := newStore(t, r, redisstore.Options{URL: "redis://" + p.ln.Addr().String() + "/0", Prefix: "{resend}:"})

	is := storetest.SampleIssuance("iss_resent", storetest.Epoch())
	marked := make(chan error, 1)
	p.arm(func() {
		m := *is
		m.RevokedAt, m.RevocationID = storetest.Epoch().Add(time.Second), "rev_between"
		_, err := direct.MarkRevoked(context.Background(), &m)
		marked <- err
	})
	before := p.scriptCalls()
	if err := proxied.PutIssuance(t.Context(), is); err != nil {
		t.Fatalf("PutIssuance() through the dropping proxy = %v, want nil (sent again)", err)
	}
	if err := ran(t, marked); err != nil {
		t.Fatalf("MarkRevoked() between = %v", err)
	}
	if n := p.scriptCalls() - before; n < 2 {
		t.Fatalf("PutIssuance() made %d script calls, want the one whose reply was lost and its resend", n)
	}
	got, err := direct.GetIssuance(t.Context(), is.ID)
	if err != nil || got.RevocationID != "rev_between" || got.RevokedAt.IsZero() {
		t.Errorf("GetIssuance() after the resent put = %+v, %v; want rev_between's mark standing", got, err)
	}
}

// TestDeleteBlockResent: a DeleteBlock whose script ran and whose reply was
// lost is sent again by go-redis and answers deleted, with nothing in
// between or with the workload blocked again by another revocation (which
// stays); it used to answer ErrNotFound, or ErrBlockChanged.
func TestDeleteBlockResent(t *testing.T) {
	r := harness.StartRedis(t)
	direct := newStore(t, r, redisstore.Options{Prefix: "{resend}:"})
	p := startDropProxy(t, r.Addr())
	proxied := newStore(t, r, redisstore.Options{URL: "redis://" + p.ln.Addr().String() + "/0", Prefix: "{resend}:"})
	for _, c := range []struct {
		name    string
		between string // the revocation that blocks the workload again, "" for none
	}{
		{"ok/nothing-between", ""},
		{"ok/blocked-again-between", "rev_2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := "w-" + c.name[3:]
			if err := direct.PutBlock(t.Context(), broker.Block{Workload: w, RevocationID: "rev_1", CreatedAt: storetest.Epoch()}); err != nil {
				t.Fatal(err)
			}
			blocked := make(chan error, 1)
			p.arm(func() {
				var err error
				if c.between != "" {
					err = direct.PutBlock(context.Background(), broker.Block{Workload: w, RevocationID: c.between, CreatedAt: storetest.Epoch()})
				}
				blocked <- err
			})
			before := p.scriptCalls()
			if err := proxied.DeleteBlock(t.Context(), w, "rev_1"); err != nil {
				t.Errorf("DeleteBlock() through the dropping proxy = %v, want nil (deleted, then sent again)", err)
			}
			if err := ran(t, blocked); err != nil {
				t.Fatalf("PutBlock(%s) between = %v", c.between, err)
			}
			if n := p.scriptCalls() - before; n < 2 {
				t.Fatalf("DeleteBlock() made %d script calls, want the one whose reply was lost and its resend", n)
			}
			b, err := direct.GetBlock(t.Context(), w)
			switch {
			case c.between == "" && !errors.Is(err, broker.ErrNotFound):
				t.Errorf("GetBlock() = %+v, %v; want ErrNotFound", b, err)
			case c.between != "" && (err != nil || b.RevocationID != c.between):
				t.Errorf("GetBlock() = %+v, %v; want %s's block standing", b, err, c.between)
			}
		})
	}
}

// putRevocationResent puts rev (keys under prefix) through a proxy that
// loses the reply of its first script call, so that go-redis sends the put
// again; update is made to the stored record, through a store of its own,
// between the script and its resend. It returns that direct store.
func putRevocationResent(t *testing.T, prefix string, rev *broker.Revocation, update func(r *broker.Revocation)) *redisstore.Store {
	t.Helper()
	r := harness.StartRedis(t)
	direct := newStore(t, r, redisstore.Options{Prefix: prefix})
	p := startDropProxy(t, r.Addr())
	proxied := newStore(t, r, redisstore.Options{URL: "redis://" + p.ln.Addr().String() + "/0", Prefix: prefix})
	updated := make(chan error, 1)
	p.arm(func() {
		_, err := direct.UpdateRevocation(context.Background(), rev.ID, func(r *broker.Revocation) error {
			update(r)
			return nil
		})
		updated <- err
	})
	before := p.scriptCalls()
	if err := proxied.PutRevocation(t.Context(), rev); err != nil {
		t.Fatalf("PutRevocation() through the dropping proxy = %v, want nil (sent again)", err)
	}
	if err := ran(t, updated); err != nil {
		t.Fatalf("UpdateRevocation() between = %v", err)
	}
	if n := p.scriptCalls() - before; n < 2 {
		t.Fatalf("PutRevocation() made %d script calls, want the one whose reply was lost and its resend", n)
	}
	return direct
}

// TestPutRevocationResentAfterUpdate: a PutRevocation whose script ran and
// whose reply was lost is sent again by go-redis; an UpdateRevocation made
// in between (an unblock's time, as Service.Unblock's noteUnblock writes
// it, which the sweep needs) stays (the resent put used to overwrite the
// record with the creation copy).
func TestPutRevocationResentAfterUpdate(t *testing.T) {
	at := storetest.Epoch().Add(time.Minute).UTC()
	rev := &broker.Revocation{
		ID: "rev_resent", Selector: broker.RevokeSelector{Workload: "w1"}, Block: true,
		CreatedAt: storetest.Epoch(), SweepAt: storetest.Epoch().Add(time.Hour), Blocks: []string{"w1"},
	}
	direct := putRevocationResent(t, "{resend}:", rev, func(r *broker.Revocation) {
		r.Unblocked = map[string]time.Time{"w1": at}
	})
	got, err := direct.GetRevocation(t.Context(), rev.ID)
	if err != nil || !got.Unblocked["w1"].Equal(at) {
		t.Errorf("GetRevocation() after the resent put = %+v, %v; want the unblock time %v written in between", got, err, at)
	}
	// Another call is a put of its own: it stores r whole, as before.
	if err := direct.PutRevocation(t.Context(), rev); err != nil {
		t.Fatalf("PutRevocation() again = %v", err)
	}
	if got, err := direct.GetRevocation(t.Context(), rev.ID); err != nil || len(got.Unblocked) != 0 {
		t.Errorf("GetRevocation() after another put = %+v, %v; want r as put", got, err)
	}
}

// TestPutRevocationResentAfterDecisionCleared: a revocation created with
// its decision events not known durable (Revocation.Decision) whose put
// is sent again by go-redis after the events were made durable and the
// record cleared (UpdateRevocation, by the request or a worker) stays
// cleared: a resent put that brought them back would have a worker write
// the decision into its log a second time, and keep the record
// incomplete.
func TestPutRevocationResentAfterDecisionCleared(t *testing.T) {
	done := storetest.Epoch().Add(time.Minute).UTC()
	rev := &broker.Revocation{
		ID: "rev_resent", Selector: broker.RevokeSelector{IssuanceID: "iss_1"}, CreatedAt: storetest.Epoch(),
		Revoked: []string{"iss_1"}, Pending: []string{}, Failed: []broker.RevokeFailure{},
		Decision: []*audit.Event{{Type: audit.TypeRevoke, RevocationID: "rev_resent", Reason: "leaked", Details: map[string]any{"issuance_ids": []any{"iss_1"}}}},
	}
	direct := putRevocationResent(t, "{resend-decision}:", rev, func(r *broker.Revocation) {
		r.Decision, r.CompletedAt = nil, done
	})
	got, err := direct.GetRevocation(t.Context(), rev.ID)
	if err != nil || got.Decision != nil || !got.CompletedAt.Equal(done) {
		t.Errorf("GetRevocation() after the resent put = %+v, %v; want the decision cleared, complete at %v", got, err, done)
	}
	if pending, err := direct.ListRevocations(t.Context(), broker.RevocationFilter{Pending: true}); err != nil || len(pending) != 0 {
		t.Errorf("ListRevocations(pending) = %v, %v; want none", pending, err)
	}
}

// TestPutBlockLostReplyNotSentAgain: PutBlock is a MULTI/EXEC transaction,
// which go-redis (v9.23.0) does not send again once it is written: a lost
// EXEC reply is an error, not a resend (txPipelineProcessCmds answers
// canRetry false after the write; the Cluster client's tx path makes a read
// error fatal). So an unblock, or another revocation's block, landing
// between the EXEC and a resend cannot be undone by one. This pins it: a
// go-redis that resent the transaction would block the workload again
// after its unblock (or put rev_1's block over rev_2's).
func TestPutBlockLostReplyNotSentAgain(t *testing.T) {
	r := harness.StartRedis(t)
	direct := newStore(t, r, redisstore.Options{Prefix: "{resend}:"})
	p := startDropProxyFor(t, r.Addr(), "EXEC")
	proxied := newStore(t, r, redisstore.Options{URL: "redis://" + p.ln.Addr().String() + "/0", Prefix: "{resend}:"})
	for _, c := range []struct {
		name    string
		between string // "" unblocks rev_1's block; else that revocation blocks the workload
	}{
		{"unblocked-between", ""},
		{"blocked-again-between", "rev_2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := "w-" + c.name
			done := make(chan error, 1)
			p.arm(func() {
				ctx := context.Background()
				b, err := direct.GetBlock(ctx, w)
				switch {
				case err != nil || b.RevocationID != "rev_1":
					err = fmt.Errorf("block when the EXEC reply came = %+v, %v; want rev_1's", b, err)
				case c.between == "":
					err = direct.DeleteBlock(ctx, w, "rev_1")
				default:
					err = direct.PutBlock(ctx, broker.Block{Workload: w, RevocationID: c.between, CreatedAt: storetest.Epoch()})
				}
				done <- err
			})
			before := p.scriptCalls()
			err := proxied.PutBlock(t.Context(), broker.Block{Workload: w, RevocationID: "rev_1", CreatedAt: storetest.Epoch()})
			if !errors.Is(err, broker.ErrUnavailable) {
				t.Errorf("PutBlock() whose EXEC reply was lost = %v, want ErrUnavailable (not sent again)", err)
			}
			if err := ran(t, done); err != nil {
				t.Fatalf("between: %v", err)
			}
			if n := p.scriptCalls() - before; n != 1 {
				t.Errorf("PutBlock() sent EXEC %d times, want once", n)
			}
			b, err := direct.GetBlock(t.Context(), w)
			switch {
			case c.between == "" && !errors.Is(err, broker.ErrNotFound):
				t.Errorf("GetBlock() = %+v, %v; want ErrNotFound (the unblock stands)", b, err)
			case c.between != "" && (err != nil || b.RevocationID != c.between):
				t.Errorf("GetBlock() = %+v, %v; want %s's block standing", b, err, c.between)
			}
		})
	}
}

// TestPublishResentDeliveredOnce: a PUBLISH whose reply was lost is sent
// again by go-redis and reaches the subscribers again, after what was
// published in between: here the block notice of rev_1 after the notice of
// its unblock, which made a RevocationCache block the unblocked workload
// again until its next refresh. A subscriber passes each Publish call's
// notice on once.
func TestPublishResentDeliveredOnce(t *testing.T) {
	r := harness.StartRedis(t)
	direct := newStore(t, r, redisstore.Options{Prefix: "{resend}:"})
	p := startDropProxyFor(t, r.Addr(), "PUBLISH")
	proxied := newStore(t, r, redisstore.Options{URL: "redis://" + p.ln.Addr().String() + "/0", Prefix: "{resend}:"})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	sub, err := direct.Subscribe(ctx)
	if err != nil {
		t.Fatalf("Subscribe() = %v", err)
	}

	block := broker.Notice{RevocationID: "rev_1", Revoked: []string{"iss_1"}, Blocked: []string{"w1"}}
	unblock := broker.Notice{RevocationID: "rev_1", Unblocked: []string{"w1"}}
	last := broker.Notice{RevocationID: "rev_last"}
	published := make(chan error, 1)
	p.arm(func() { published <- direct.Publish(context.Background(), unblock) })
	before := p.scriptCalls()
	if err := proxied.Publish(t.Context(), block); err != nil {
		t.Fatalf("Publish() through the dropping proxy = %v, want nil (sent again)", err)
	}
	if err := ran(t, published); err != nil {
		t.Fatalf("Publish(unblock) between = %v", err)
	}
	if n := p.scriptCalls() - before; n < 2 {
		t.Fatalf("Publish() sent PUBLISH %d times, want the one whose reply was lost and its resend", n)
	}
	if err := direct.Publish(t.Context(), last); err != nil {
		t.Fatalf("Publish(last) = %v", err)
	}
	var got []broker.Notice
	for {
		n, ok := receive(t, sub, 10*time.Second)
		if !ok {
			t.Fatal("subscription closed")
		}
		got = append(got, n)
		if n.RevocationID == last.RevocationID {
			break
		}
	}
	if want := []broker.Notice{block, unblock, last}; !cmp.Equal(got, want) {
		t.Errorf("notices received = %+v, want %+v (each once)", got, want)
	}
}
