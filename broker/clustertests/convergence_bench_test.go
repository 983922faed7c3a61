package clustertests

import (
	"fmt"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster/routes"
)

// BenchmarkJoinConvergence100k measures how long a node joining a 2-node
// cluster takes to hold the full session table and routing index when the
// cluster has 100,000 subscriptions (10,000 sessions of 10 filters each,
// written through the replication API rather than 10,000 MQTT clients, on
// both old nodes).
//
//	go test -run XXX -bench JoinConvergence -benchtime 1x -count 3 ./broker/clustertests/
func BenchmarkJoinConvergence100k(b *testing.B) {
	const sessions, perSession = 10000, 10
	for range b.N {
		b.StopTimer()
		c := newCluster(b, 2, clusterOptions{})
		for i := range sessions {
			owner := c.names[i%2]
			// Records name nodes outside the cluster: a node deletes
			// records naming itself that have no MQTT session behind them.
			rec := routes.SessionRecord{Node: "elsewhere-" + owner}
			for k := range perSession {
				rec.Subs = append(rec.Subs, routes.Subscription{Filter: fmt.Sprintf("conv/%d/%d/#", i, k), QoS: 1})
			}
			c.node(owner).Cluster().PutSession(fmt.Sprintf("conv-%05d", i), rec)
		}
		deadline := time.Now().Add(60 * time.Second)
		for c.node("n1").Cluster().Status().Sessions != sessions || c.node("n2").Cluster().Status().Sessions != sessions {
			if time.Now().After(deadline) {
				b.Fatal("the two nodes never converged on the loaded table")
			}
			time.Sleep(10 * time.Millisecond)
		}
		b.StartTimer()
		start := time.Now()
		c.start("n3")
		n3 := c.node("n3").Cluster()
		for {
			st := n3.Status()
			total := 0
			for _, v := range st.Subscriptions {
				total += v
			}
			if st.Sessions == sessions && total == sessions*perSession {
				break
			}
			if time.Since(start) > 60*time.Second {
				b.Fatalf("joining node has %d sessions / %d subscriptions after 60s", st.Sessions, total)
			}
			time.Sleep(5 * time.Millisecond)
		}
		b.ReportMetric(float64(time.Since(start).Milliseconds()), "ms-to-converge")
		b.StopTimer()
	}
}
