package broker_test

import (
	"path/filepath"
	"strconv"
	"testing"

	"github.com/mendmq/mendmq/broker/brokertest"
)

// TestResumeOrder: the QoS 1/2 messages queued for a disconnected session
// are resent, when it resumes, in the order they were published
// [MQTT-4.6.0-1], also after a restart that restored the session from
// storage. mochi v2.7.9 sorts its queue by the low 16 bits of each
// message's creation time in seconds, with an unstable sort: messages
// queued in the same second come out in map order (pinned in
// broker/mochix TestResendOrderIsMapOrder).
func TestResumeOrder(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		restart bool
	}{
		{"in memory", false},
		{"across a restart with storage", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := brokertest.Config()
			if tc.restart {
				cfg.Storage.Path = filepath.Join(t.TempDir(), "s.db")
			}
			n := brokertest.Start(t, cfg)
			opts := brokertest.V5Options{KeepSession: true, SessionExpiry: 300}
			s := brokertest.MustV5(t, n.URL(0), "orderly", opts)
			s.MustSub("ord/#", 1)
			s.MustSub("ord2/#", 2)
			s.Close()
			n.WaitMetric(0, "mendmq_clients_connected") // see TestPersistentSessionV5

			const queued = 60
			p := brokertest.MustV5(t, n.URL(0), "order-pub")
			for i := range queued {
				topic, qos := "ord/x", byte(1)
				if i%3 == 0 {
					topic, qos = "ord2/x", 2
				}
				p.MustPub(topic, qos, false, strconv.Itoa(i))
			}
			p.Fence()
			if tc.restart {
				p.Close()
				n.Stop()
				n = brokertest.Start(t, cfg)
			}

			s = brokertest.MustV5(t, n.URL(0), "orderly", opts)
			if !s.Connack.SessionPresent {
				t.Fatal("session not present")
			}
			var got []string
			for range queued {
				got = append(got, string(s.Next().Payload))
			}
			for i, g := range got {
				if g != strconv.Itoa(i) {
					t.Fatalf("resent in the order %v, want 0 to %d", got, queued-1)
				}
			}
		})
	}
}
