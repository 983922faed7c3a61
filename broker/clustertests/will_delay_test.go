package clustertests

import (
	"fmt"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mendmq/mendmq/broker/brokertest"
)

// testDelayedWillAcrossNodes: a v5 client with a persistent session and a
// will with a Will Delay Interval loses its connection on n1, with its
// subscribers on n2 and n3. Left alone, the will reaches them once, not
// before the delay [MQTT-3.1.3-9]. If the client reconnects within the
// delay, on n1 or on another node (which takes the session over), the
// will is not published at all.
func testDelayedWillAcrossNodes(t *testing.T, c *testCluster) {
	const delay = 2 // seconds
	for _, tc := range []struct {
		name      string
		reconnect string // node the client reconnects to within the delay; "" none
		live      bool   // reconnect while the first connection is still open (a takeover)
	}{
		{"fires after the delay", "", false},
		{"cancelled by a reconnect on the same node", "n1", false},
		{"cancelled by a reconnect on another node", "n2", false},
		// The reconnect comes before the old connection ended (as when
		// the node has not yet noticed it drop): no will either
		// [MQTT-3.1.4-3], on n1 nor on another node.
		{"not sent on a takeover on the same node", "n1", true},
		{"not sent on a takeover on another node", "n2", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprintf("xwill-%s-%t", tc.reconnect, tc.live)
			topic := fmt.Sprintf("xwill/%s/%t/w", tc.reconnect, tc.live)
			var subs []*brokertest.V5
			for _, n := range []string{"n2", "n3"} {
				s := brokertest.MustV5(t, c.url(n), id+"-sub-"+n)
				s.MustSub("xwill/#", 1)
				subscribed(t, s)
				subs = append(subs, s)
			}
			opts := brokertest.V5Options{KeepSession: true, SessionExpiry: 60,
				Will:           &paho.WillMessage{Topic: topic, QoS: 1, Payload: []byte("gone")},
				WillProperties: &paho.WillProperties{WillDelayInterval: ptr(uint32(delay))}}
			w := brokertest.MustV5(t, c.url("n1"), id, opts)
			c.waitRoutes()
			dropped := time.Now()
			if !tc.live {
				w.Drop()
			}
			if tc.reconnect == "" {
				for i, s := range subs {
					m := s.Next()
					if string(m.Payload) != "gone" || m.Topic != topic {
						t.Fatalf("subscriber %d: got %q on %s, want the will", i, m.Payload, m.Topic)
					}
					if i == 0 {
						if took := time.Since(dropped); took < delay*time.Second-250*time.Millisecond {
							t.Errorf("will published %v after the connection was lost, want after the %d s delay", took, delay)
						}
					}
				}
			} else {
				again := opts
				again.Will, again.WillProperties = nil, nil
				r := brokertest.MustV5(t, c.url(tc.reconnect), id, again)
				if !r.Connack.SessionPresent {
					t.Fatalf("reconnect on %s: session present = false", tc.reconnect)
				}
				if took := time.Since(dropped); took >= delay*time.Second {
					t.Skipf("reconnect took %v, longer than the will delay: nothing to show", took)
				}
				// A will is due when its delay has passed (mochi checks
				// every second): wait past that, then a marker shows
				// whether it came. Time is the event here.
				<-time.After(time.Until(dropped.Add((delay + 2) * time.Second)))
			}
			marker := brokertest.MustV5(t, c.url("n1"), id+"-marker")
			marker.MustPub("xwill/m", 1, false, "marker")
			want := []string{"gone"}
			if tc.reconnect != "" {
				want = nil
			}
			for i, s := range subs {
				got := counts(s.Until("xwill/m"))
				if tc.reconnect == "" {
					got["gone"]++ // the one read above
				}
				expectOnce(t, fmt.Sprintf("subscriber %d (reconnect on %q)", i, tc.reconnect), got, want)
			}
		})
	}
}
