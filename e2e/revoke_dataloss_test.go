package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestRevokeSurvivesRedisDataLoss: two instances share a Redis that loses
// every key (FLUSHALL) a moment after a blocking revocation, before a
// refresh read it. The first instance to refresh sees the loss (ERROR log,
// keytrail_store_data_losses_total: the announced block and its revocation
// are gone) and writes the block back into Redis; both go on refusing the
// blocked workload, and so does an instance restarted after the loss.
func TestRevokeSurvivesRedisDataLoss(t *testing.T) {
	c := startCluster(t, 2)
	const payments = "system:serviceaccount:payments:api"
	if status, cr := c.exchange(t, nodeA, payments, "pod-1", "payments-vault"); status != 200 {
		t.Fatalf("exchange on A = %d %+v", status, cr)
	}
	if status, rc := c.revoke(t, nodeB, `{"workload":"payments-api","reason":"INC-1: key leaked","block":true}`); status != 200 {
		t.Fatalf("revoke on B = %d %+v", status, rc)
	}
	refused := func(node int) bool {
		status, _ := c.exchange(t, node, payments, "pod-2", "payments-vault")
		return status == 403
	}
	until(t, 10*time.Second, "A refusing the blocked workload", func() bool { return refused(nodeA) })

	rdb := redis.NewClient(&redis.Options{Addr: c.redis.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	// The first instance to refresh sees the loss and writes the block
	// back; the other may find it written back already, and count nothing.
	until(t, 15*time.Second, "an instance counting the loss", func() bool {
		return metricValue(metrics(t, c.nodes[nodeA].URL), "keytrail_store_data_losses_total") >= 1 ||
			metricValue(metrics(t, c.nodes[nodeB].URL), "keytrail_store_data_losses_total") >= 1
	})
	until(t, 15*time.Second, "the block written back into Redis", func() bool {
		n, err := rdb.Exists(ctx, "{keytrail}:block:payments-api").Result()
		return err == nil && n == 1
	})
	for _, node := range []int{nodeA, nodeB} {
		if !refused(node) {
			t.Errorf("exchange of the blocked workload on node %d after the loss: not refused", node)
		}
	}
	if !strings.Contains(c.nodes[nodeA].Logs()+c.nodes[nodeB].Logs(), `"level":"ERROR","msg":"revocation store lost data`) {
		t.Errorf("no instance logged an ERROR about the loss")
	}
	for _, node := range []int{nodeA, nodeB} {
		if got := metricValue(metrics(t, c.nodes[node].URL), "keytrail_store_data_loss_records_dropped_total"); got != 0 {
			t.Errorf("node %d: keytrail_store_data_loss_records_dropped_total = %v, want 0 (exposed, nothing dropped)", node, got)
		}
	}

	c.nodes[nodeB].Kill()
	c.nodes[nodeB].Restart()
	if !refused(nodeB) {
		t.Errorf("exchange of the blocked workload on B restarted after the loss: not refused")
	}
}

// TestRedisDataLossWithNoInstanceRunningIsReported: the only instance is
// stopped, Redis loses every key, the instance starts again. Nothing ran
// through the loss, so nothing could keep or write back the block; the
// restarted instance at least reports it (ERROR, and
// keytrail_store_data_losses_total): the store's deployment id is not the
// one it last started with. It used to start on the empty store silently.
func TestRedisDataLossWithNoInstanceRunningIsReported(t *testing.T) {
	c := startCluster(t, 1)
	if status, rc := c.revoke(t, nodeA, `{"workload":"payments-api","reason":"INC-1: key leaked","block":true}`); status != 200 {
		t.Fatalf("revoke on A = %d %+v", status, rc)
	}
	if got := metricValue(metrics(t, c.nodes[nodeA].URL), "keytrail_store_data_losses_total"); got != 0 {
		t.Fatalf("keytrail_store_data_losses_total = %v before any loss", got)
	}
	if err := c.nodes[nodeA].Stop(); err != nil {
		t.Logf("stop: %v", err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: c.redis.Addr()})
	defer rdb.Close()
	if err := rdb.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	c.nodes[nodeA].Restart()
	if got := metricValue(metrics(t, c.nodes[nodeA].URL), "keytrail_store_data_losses_total"); got != 1 {
		t.Errorf("keytrail_store_data_losses_total = %v after a restart on the flushed store, want 1", got)
	}
	if !strings.Contains(c.nodes[nodeA].Logs(), "lost data while no instance ran through it") {
		t.Errorf("no ERROR about the loss in the restarted instance's log")
	}
}

// TestRedisDataLossSeenRunningIsNotReportedAgainAtRestart: a loss an
// instance ran through (seen within a second, counted, the block written
// back) is not, at that instance's next restart, reported again as a loss
// that no instance ran through: nothing was missed.
func TestRedisDataLossSeenRunningIsNotReportedAgainAtRestart(t *testing.T) {
	c := startCluster(t, 1)
	if status, rc := c.revoke(t, nodeA, `{"workload":"payments-api","reason":"INC-1: key leaked","block":true}`); status != 200 {
		t.Fatalf("revoke on A = %d %+v", status, rc)
	}
	rdb := redis.NewClient(&redis.Options{Addr: c.redis.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	until(t, 15*time.Second, "A counting the loss", func() bool {
		return metricValue(metrics(t, c.nodes[nodeA].URL), "keytrail_store_data_losses_total") >= 1
	})
	until(t, 15*time.Second, "the block written back into Redis", func() bool {
		n, err := rdb.Exists(ctx, "{keytrail}:block:payments-api").Result()
		return err == nil && n == 1
	})
	until(t, 15*time.Second, "the deployment id written back into Redis", func() bool {
		n, err := rdb.Exists(ctx, "{keytrail}:deployment").Result()
		return err == nil && n == 1
	})
	if err := c.nodes[nodeA].Stop(); err != nil {
		t.Logf("stop: %v", err)
	}
	c.nodes[nodeA].Restart()
	if got := metricValue(metrics(t, c.nodes[nodeA].URL), "keytrail_store_data_losses_total"); got != 0 {
		t.Errorf("keytrail_store_data_losses_total = %v after restarting the instance that ran through the loss, want 0", got)
	}
	if strings.Contains(c.nodes[nodeA].Logs(), "lost data while no instance ran through it") {
		t.Errorf("the restart reported the loss it ran through as one no instance ran through")
	}
}
