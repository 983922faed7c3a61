package clusterhook_test

import (
	"errors"
	"io"
	"log/slog"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/clusterhook"
	"github.com/mendmq/mendmq/broker/handoff"
	"github.com/mendmq/mendmq/broker/metrics"
	"github.com/mendmq/mendmq/broker/mochix"
	"github.com/mendmq/mendmq/broker/quirks"
	"github.com/mendmq/mendmq/broker/refuse"
)

// TestShadowDriver runs the old node's side of a handoff through the
// driver on synctest's clock (no listener; the hook methods mochi would
// call are called directly): caught while pending, handed over by
// FinishTakeover; a straggler shipped at once; a failed shipment retried
// RetryInterval later; the session dropped here when the grace period
// ends.
func TestShadowDriver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const forward = time.Second
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		srv := mqtt.New(&mqtt.Options{Logger: log})
		fake := &fakeCluster{}
		h := clusterhook.New(clusterhook.Options{Server: srv, Metrics: metrics.New(srv.Info), Log: log,
			ForwardTimeout: forward, RegisterTimeout: forward,
			Refuse: refuse.New(srv, refuse.Options{}), Queue: quirks.New(srv, nil)})
		h.SetCluster(fake)
		defer h.Session.OnStopped()

		cl := mochix.Detached(srv, "s", func(cl *mqtt.Client) {
			cl.Properties.ProtocolVersion = 5
			cl.Properties.Props.SessionExpiryInterval = 300
			mochix.Subscribe(srv, cl, packets.Subscription{Filter: "t/#", Qos: 2})
		})
		publish := func(payload string) {
			q, err := mochix.Enqueue(srv, cl, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2},
				TopicName: "t/x", Payload: []byte(payload)})
			if err != nil {
				t.Fatal(err)
			}
			h.Handoff.OnQosPublish(cl, q, 0, 0) // as mochi does after queuing
		}
		appended := func() []string {
			fake.mu.Lock()
			defer fake.mu.Unlock()
			var out []string
			for _, b := range fake.appended {
				out = append(out, decodeInflight(t, b)...)
			}
			return out
		}

		if _, err := h.Broker().TakeoverSession("s", "n3", true); err != nil {
			t.Fatal(err)
		}
		publish("pending")
		synctest.Wait()
		rest, err := h.Broker().FinishTakeover("s", "n3")
		if err != nil || !slices.Equal(decodeInflight(t, rest), []string{"pending"}) {
			t.Fatalf("FinishTakeover: %q %v, want the message caught while pending", decodeInflight(t, rest), err)
		}

		publish("straggler")
		synctest.Wait()
		if got := appended(); !slices.Equal(got, []string{"straggler"}) {
			t.Fatalf("shipped %v, want the straggler at once", got)
		}

		fake.mu.Lock()
		fake.appendErr = errors.New("n3 unreachable")
		fake.mu.Unlock()
		publish("retried")
		synctest.Wait()
		fake.mu.Lock()
		fake.appendErr = nil
		fake.mu.Unlock()
		time.Sleep(handoff.RetryInterval)
		synctest.Wait()
		if got := appended(); !slices.Equal(got, []string{"straggler", "retried"}) {
			t.Fatalf("shipped %v, want the failed shipment retried", got)
		}
		if h.Broker().LocalSession("s") {
			t.Fatal("a session being handed off counts as local")
		}

		time.Sleep(handoff.GraceFactor * forward)
		synctest.Wait()
		if _, ok := mochix.Client(srv, "s"); ok {
			t.Fatal("the session is still here after the grace period")
		}
		if len(mochix.Subscriptions(cl)) != 0 || mochix.QueueLen(cl) != 0 {
			t.Fatal("the ended shadow kept subscriptions or messages")
		}
	})
}
