package clustertests

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/config"
	"github.com/mendmq/mendmq/cluster/dataplane"
)

// slowNet is a data-plane network whose accepted connections read at a
// trickle while throttled: the node behind it is a slow peer (overloaded
// host, congested link) for everyone who sends to it.
type slowNet struct{ throttled atomic.Bool }

var _ dataplane.Network = (*slowNet)(nil)

func (s *slowNet) Listen(addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return slowListener{Listener: l, s: s}, nil
}

func (s *slowNet) Dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

type slowListener struct {
	net.Listener
	s *slowNet
}

func (l slowListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return slowConn{Conn: c, s: l.s}, nil
}

type slowConn struct {
	net.Conn
	s *slowNet
}

// Read takes at most 512 bytes per 2 ms while throttled (≤ 256 KB/s).
// The pause is the injected fault, not a wait for an event.
func (c slowConn) Read(b []byte) (int, error) {
	if c.s.throttled.Load() {
		time.Sleep(2 * time.Millisecond)
		if len(b) > 512 {
			b = b[:512]
		}
	}
	return c.Conn.Read(b)
}

// TestSlowPeer: a QoS 0 flood published on n1 to a topic with a
// subscriber on n1 and one on n2, whose data plane reads slowly.
//
//   - Local delivery on n1 finishes at its own pace while n2 is still far
//     behind, and another client's QoS 1 publish on n1 to a local-only
//     topic is acknowledged promptly: the slow peer's queue (and the
//     socket buffers) absorb the back-pressure.
//   - Once the peer speeds up it receives the whole flood (nothing was
//     dropped; the queue had room).
//   - A second, larger flood is still queued for the slow peer when n1
//     shuts down: the shutdown does not wait for calls stuck behind it.
func TestSlowPeer(t *testing.T) {
	slow := &slowNet{}
	// n3 idles: once n1 is shut down, n2 is not left alone in the cluster
	// until cleanup.
	c := newCluster(t, 3, clusterOptions{Mutate: func(name string, cfg *config.Config) {
		if name == "n2" {
			cfg.Cluster.DataNetwork = slow
		}
	}})
	local := brokertest.MustV5(t, c.url("n1"), "slow-local")
	local.MustSub("flood/#", 0)
	remote := brokertest.MustV5(t, c.url("n2"), "slow-remote")
	remote.MustSub("flood/#", 0)
	probe := brokertest.MustV5(t, c.url("n1"), "slow-probe")
	probe.MustSub("probe/#", 1)
	pub := brokertest.MustV5(t, c.url("n1"), "slow-pub")
	probePub := brokertest.MustV5(t, c.url("n1"), "slow-probe-pub")
	c.waitRoutes()

	const n = 3000 // below the clients' inbox, so nothing needs draining meanwhile
	payload := strings.Repeat("x", 200)
	recv0 := c.node("n2").Cluster().Status().Received
	slow.throttled.Store(true)
	start := time.Now()
	for i := range n {
		pub.MustPub("flood/x", 0, false, fmt.Sprintf("%05d%s", i, payload))
	}
	published := time.Since(start)
	t0 := time.Now()
	probePub.MustPub("probe/x", 1, false, "probe")
	ack := time.Since(t0)
	if m := probe.Next(); string(m.Payload) != "probe" {
		t.Fatalf("probe got %q", m.Payload)
	}
	for i := range n {
		m := local.Next()
		if want := fmt.Sprintf("%05d", i); !strings.HasPrefix(string(m.Payload), want) {
			t.Fatalf("local subscriber: message %d is %.5s…, want %s…", i, m.Payload, want)
		}
	}
	localDone := time.Since(start)
	remoteDone := c.node("n2").Cluster().Status().Received - recv0
	q := queueTo(c, "n1", "n2")
	t.Logf("flood of %d: published in %v, local delivery done in %v, QoS1 probe acked in %v; slow peer had received %d, %d frames queued for it",
		n, published.Round(time.Millisecond), localDone.Round(time.Millisecond), ack.Round(time.Millisecond), remoteDone, q)
	if remoteDone >= n {
		t.Fatalf("the slow peer kept up (%d of %d received): the throttle did not create back-pressure", remoteDone, n)
	}
	if ack > 2*time.Second {
		t.Errorf("QoS 1 publish to a local-only topic took %v to be acknowledged during the flood", ack)
	}

	slow.throttled.Store(false)
	c.eventually("the slow peer to catch up", func() (bool, string) {
		got := c.node("n2").Cluster().Status().Received - recv0
		return got == n, fmt.Sprintf("received %d of %d", got, n)
	})
	if d := c.node("n1").Metric("mendmq_cluster_forward_dropped_total"); d != 0 {
		t.Errorf("%v QoS 0 forwards dropped; the queue had room for the whole flood", d)
	}
	for i := range n {
		if m := remote.Next(); !strings.HasPrefix(string(m.Payload), fmt.Sprintf("%05d", i)) {
			t.Fatalf("remote subscriber: message %d is %.5s…", i, m.Payload)
		}
	}

	// n1 shuts down while seconds of traffic are queued for the slow
	// peer (and an anti-entropy call to it is stuck behind them): the
	// shutdown must not wait for that call to time out.
	slow.throttled.Store(true)
	big := strings.Repeat("y", 2000)
	ae := c.node("n1").Metric("mendmq_cluster_anti_entropy_total", "what", "rounds")
	for i := range n {
		pub.MustPub("flood/y", 0, false, fmt.Sprintf("%05d%s", i, big))
	}
	c.eventually("an anti-entropy round behind the flood", func() (bool, string) {
		r := c.node("n1").Metric("mendmq_cluster_anti_entropy_total", "what", "rounds")
		return r > ae, fmt.Sprint(r)
	})
	q = queueTo(c, "n1", "n2")
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	t0 = time.Now()
	if err := c.node("n1").Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	took := time.Since(t0)
	t.Logf("n1 shut down in %v with %d frames queued for the slow peer", took.Round(time.Millisecond), q)
	if took > 5*time.Second {
		t.Errorf("shutdown took %v behind a slow peer", took)
	}
	// Let n2 drain for cleanup; what n1 had not sent is dropped, as QoS 0
	// may be (the remote client's inbox holds the rest unread).
	slow.throttled.Store(false)
}

// queueTo returns the frames node from has queued for peer.
func queueTo(c *testCluster, from, peer string) int {
	for _, m := range c.node(from).Cluster().Status().Members {
		if m.Name == peer {
			return m.QueueFrames
		}
	}
	return -1
}
