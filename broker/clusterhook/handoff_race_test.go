package clusterhook_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mendmq/mendmq/broker/brokertest"
)

// TestDirectAndHandedRace: during a handoff the same messages reach the
// new node by both paths at once — directly (forwarded, or held and
// drained after a netsplit's heal) and handed over by the old node
// (AppendSession) — as after a cut right after a takeover's CONNACK. Each
// must reach the client once. (Found by TestPartitionDuringTakeover: a
// direct copy withdrawn at the end of a burst of writes left the burst in
// mochi's write buffer, unflushed until the client's next write; see
// mochix.Withhold.)
func TestDirectAndHandedRace(t *testing.T) {
	const n, batch = 200, 10
	fake := &fakeCluster{session: sessionBlob(t, true)}
	nd := startNode(t, fake, nil)
	c := brokertest.MustV5(t, nd.url(), "c", brokertest.V5Options{KeepSession: true, SessionExpiry: 300})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for k := 1; k <= n; k++ {
			forward(t, nd, "n1", uint64(k), fmt.Sprint("m", k))
		}
	}()
	go func() {
		defer wg.Done()
		for k := 1; k <= n; k += batch {
			var msgs []wireMsg
			for j := k; j < k+batch; j++ {
				msgs = append(msgs, publishMsg(t, uint16(j), fmt.Sprint("m", j), "n1", uint64(j)))
			}
			if err := nd.hooks.Broker().AppendSession("c", sessionBlob(t, false, msgs...)); err != nil {
				t.Errorf("AppendSession: %v", err)
			}
		}
	}()
	wg.Wait()
	got := map[string]int{}
	deadline := time.After(brokertest.Timeout)
	for len(got) < n {
		select {
		case m := <-c.Msgs():
			got[string(m.Payload)]++
		case <-deadline:
			var missing []string
			for k := 1; k <= n; k++ {
				if got[fmt.Sprint("m", k)] == 0 {
					missing = append(missing, fmt.Sprint("m", k))
				}
			}
			t.Fatalf("%d of %d messages never reached the client: %v", len(missing), n, missing)
		}
	}
	// Nothing twice, including what may still be in flight: a marker
	// from the same origin closes the stream.
	forward(t, nd, "n1", n+1, "end")
	for {
		m := c.Next()
		if string(m.Payload) == "end" {
			break
		}
		got[string(m.Payload)]++
	}
	for p, k := range got {
		if k > 1 {
			t.Errorf("%s reached the client %d times", p, k)
		}
	}
}
