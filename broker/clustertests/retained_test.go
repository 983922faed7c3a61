package clustertests

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mendmq/mendmq/broker"
	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/clusterhook"
	"github.com/mendmq/mendmq/broker/config"
	"github.com/mendmq/mendmq/broker/mochix"
)

// testRetained: a retained message set on n1 is replicated; new
// subscribers on n2 and n3 get it, with its properties, from their own
// node's copy. Cleared on n2, it is gone everywhere.
func testRetained(t *testing.T, c *testCluster) {
	pub := brokertest.MustV5(t, c.url("n1"), "ret-pub")
	expiry := uint32(3600)
	ctx, cancel := timeoutCtx()
	_, err := pub.Publish(ctx, &paho.Publish{Topic: "ret/a", QoS: 1, Retain: true, Payload: []byte("v1"),
		Properties: &paho.PublishProperties{ContentType: "text/plain", MessageExpiry: &expiry, User: paho.UserProperties{{Key: "k", Value: "v"}}}})
	cancel()
	if err != nil {
		t.Fatalf("publish retained: %v", err)
	}
	// Replication alone carries it: no node subscribes to ret/#, so no
	// publish was forwarded.
	c.waitRetained("ret/a", "v1")
	for _, n := range []string{"n2", "n3"} {
		s := brokertest.MustV5(t, c.url(n), "ret-sub-"+n)
		s.MustSub("ret/a", 1)
		m := s.Next()
		switch p := m.Properties; {
		case string(m.Payload) != "v1" || !m.Retain:
			t.Errorf("%s: new subscriber got %q retain=%v, want \"v1\" retained", n, m.Payload, m.Retain)
		case p == nil || p.ContentType != "text/plain" || p.User.Get("k") != "v":
			t.Errorf("%s: retained properties lost: %+v", n, p)
		case p.MessageExpiry == nil || *p.MessageExpiry > expiry || *p.MessageExpiry < expiry-60:
			t.Errorf("%s: retained message expiry %v, want close to %d", n, p.MessageExpiry, expiry)
		}
		s.Close()
	}

	clr := brokertest.MustV5(t, c.url("n2"), "ret-clear")
	clr.MustPub("ret/a", 1, true, "")
	c.waitRetained("ret/a", "")
	c.waitTables()
	for _, n := range c.names {
		if _, ok := c.node(n).Cluster().Retained("ret/a"); ok {
			t.Errorf("%s: replicated table still holds ret/a after it was cleared", n)
		}
		s := brokertest.MustV5(t, c.url(n), "ret-after-"+n)
		s.MustSub("ret/#", 1)
		c.waitRoutes()
		clr.MustPub("ret/marker", 1, false, "marker")
		if got := s.Until("ret/marker"); len(got) != 0 {
			t.Errorf("%s: cleared retained message still delivered: %q", n, got[0].Payload)
		}
	}
}

// testRetainedConcurrent: two nodes set the same retained topic at the
// same moment, round after round. After each round every node's mochi
// holds the value its replicated table resolved, and all nodes hold the
// same one; finally a new subscriber on every node gets that one value.
func testRetainedConcurrent(t *testing.T, c *testCluster) {
	const topic = "retc/x"
	pubs := map[string]*brokertest.V5{
		"n1": brokertest.MustV5(t, c.url("n1"), "retc-n1"),
		"n2": brokertest.MustV5(t, c.url("n2"), "retc-n2"),
	}
	var final string
	for round := range 15 {
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make(chan error, len(pubs))
		var written []string
		for name, p := range pubs {
			payload := fmt.Sprintf("r%d-%s", round, name)
			written = append(written, payload)
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				ctx, cancel := timeoutCtx()
				defer cancel()
				if _, err := p.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Retain: true, Payload: []byte(payload)}); err != nil {
					errs <- fmt.Errorf("publish %s: %w", payload, err)
				}
			}()
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		c.eventually(fmt.Sprintf("round %d to converge", round), func() (bool, string) {
			var vals []string
			for _, n := range c.names {
				mochi, _ := retainedPayload(c.node(n), topic)
				v, ok := c.node(n).Cluster().Retained(topic)
				if !ok {
					return false, n + ": no resolved value"
				}
				pk, err := clusterhook.DecodePublish(v.Publish)
				if err != nil {
					return false, fmt.Sprintf("%s: resolved value unreadable: %v", n, err)
				}
				if string(pk.Payload) != mochi {
					return false, fmt.Sprintf("%s: mochi retains %q, table resolved %q", n, mochi, pk.Payload)
				}
				vals = append(vals, mochi)
			}
			if uniq := slices.Compact(slices.Clone(vals)); len(uniq) != 1 {
				return false, fmt.Sprintf("nodes disagree: %v", vals)
			}
			if !slices.Contains(written, vals[0]) {
				return false, fmt.Sprintf("resolved %q is not one of this round's %v", vals[0], written)
			}
			final = vals[0]
			return true, ""
		})
	}
	for _, n := range c.names {
		s := brokertest.MustV5(t, c.url(n), "retc-sub-"+n)
		s.MustSub(topic, 1)
		if m := s.Next(); string(m.Payload) != final || !m.Retain {
			t.Errorf("%s: new subscriber got %q retain=%v, want %q", n, m.Payload, m.Retain, final)
		}
	}
	pubs["n1"].MustPub(topic, 1, true, "")
	c.waitRetained(topic, "")
}

// TestRetainedHitsDecideAtHeal: while n1,n2 | n3 are split, the topic's
// retained message is set on both sides: "popular" first on n1, "newer"
// later on n3. Subscribers read "popular" 3 times on n1 and 3 times on n2
// (6, never more than 3 on one node), "newer" 4 times on n3. With the
// $retained policy higherhits, "popular" wins the heal on every node: the
// policy saw the reads summed over the nodes, although n3 — which decides
// (its copy is the later write) and never served "popular" — counted none
// of them itself. The same scenario under latestupdate keeps "newer":
// the reads, not the order of the writes, decided.
func TestRetainedHitsDecideAtHeal(t *testing.T) {
	c := newCluster(t, 3, clusterOptions{Faults: true, Mutate: func(_ string, cfg *config.Config) {
		cfg.Plugins.Retained.MergePolicy = "higherhits"
		cfg.Cluster.AllowRegisterDuringNetsplit = true
		cfg.Cluster.AllowPublishDuringNetsplit = true
		cfg.Cluster.AllowSubscribeDuringNetsplit = true
	}})
	for _, tc := range []struct {
		policy, want string
		wantHits     int64 // of the winner, on every node
	}{
		{"higherhits", "popular", 6},
		{"latestupdate", "newer", 4},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			c := c.with(t)
			for _, n := range c.names {
				c.reconfigure(n, func(cfg *config.Config) { cfg.Plugins.Retained.MergePolicy = tc.policy })
			}
			topic := "hits/" + tc.policy
			c.split([]string{"n1", "n2"}, []string{"n3"})
			pubA := brokertest.MustV5(t, c.url("n1"), topic+"-pub-a")
			pubA.MustPub(topic, 1, true, "popular")
			pubA.Close()
			c.eventually("n2 to hold popular", func() (bool, string) {
				got, _ := retainedPayload(c.node("n2"), topic)
				return got == "popular", got
			})
			pubB := brokertest.MustV5(t, c.url("n3"), topic+"-pub-b")
			pubB.MustPub(topic, 1, true, "newer")
			pubB.Close()
			reads := map[string]int{"n1": 3, "n2": 3, "n3": 4}
			for _, n := range c.names {
				want := map[bool]string{true: "newer", false: "popular"}[n == "n3"]
				for k := range reads[n] {
					s := brokertest.MustV5(t, c.url(n), fmt.Sprintf("%s-read-%s-%d", topic, n, k))
					s.MustSub(topic, 1)
					if m := s.Next(); string(m.Payload) != want || !m.Retain {
						pk, ok := mochix.Retained(c.node(n).Server(), topic)
						t.Fatalf("subscriber on %s got %q retain=%v, want retained %q (%s holds %v: %+v)", n, m.Payload, m.Retain, want, n, ok, pk.FixedHeader)
					}
					s.Close()
				}
			}
			// Each side publishes its nodes' counts among itself while
			// split: the heal then carries them across with the copies.
			wantSide := map[string]int64{"n1": 6, "n2": 6, "n3": 4}
			c.eventually("each side to know its reads", func() (bool, string) {
				for n, want := range wantSide {
					if h, _, _ := c.node(n).Cluster().RetainedReads(topic); h != want {
						return false, fmt.Sprintf("%s counts %d reads, want %d", n, h, want)
					}
				}
				return true, ""
			})
			c.heal()
			c.waitRetained(topic, tc.want)
			c.eventually("every node to count the winner's reads", func() (bool, string) {
				for _, n := range c.names {
					h, last, _ := c.node(n).Cluster().RetainedReads(topic)
					if h != tc.wantHits || last.IsZero() {
						return false, fmt.Sprintf("%s: %d reads (last %v), want %d", n, h, last, tc.wantHits)
					}
				}
				return true, ""
			})
			// The admin API shows them; its own reads are not counted.
			for range 2 {
				for _, n := range c.names {
					code, body := c.node(n).Get("/api/v1/retained?topic=" + url.QueryEscape(topic))
					var l broker.RetainedList
					if err := json.Unmarshal([]byte(body), &l); code != http.StatusOK || err != nil || len(l.Messages) != 1 {
						t.Fatalf("GET retained on %s: %d %s (%v)", n, code, body, err)
					}
					if m := l.Messages[0]; m.Hits == nil || *m.Hits != tc.wantHits || m.LastReadAt == nil {
						t.Errorf("GET retained on %s: %s, want hits %d and a last read time", n, body, tc.wantHits)
					}
				}
			}
			c.waitDisconnected()
		})
	}
}
