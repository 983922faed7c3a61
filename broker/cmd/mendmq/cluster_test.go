package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestExampleClusterProcesses runs the three example nodes
// (examples/cluster/node{1,2,3}.yaml, what `make cluster` starts) as
// separate processes and drives them with mosquitto_pub/sub.
func TestExampleClusterProcesses(t *testing.T) {
	needMosquitto(t)
	if testing.Short() {
		t.Skip("multi-process cluster test skipped in -short mode")
	}
	for _, port := range []int{1883, 1884, 1885, 8081, 8082, 8083, 7946, 7947, 7956, 7957, 7966, 7967} {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Skipf("port %d of the example cluster is busy (a `make cluster` or `make run` running?): %v", port, err)
		}
		l.Close()
	}
	var procs [3]*proc
	for i := range procs {
		p := &proc{out: newSyncBuffer(), exited: make(chan error, 1), mqtt: 1883 + i, admin: 8081 + i}
		p.launch(t, filepath.Join("..", "..", "..", "examples", "cluster", fmt.Sprintf("node%d.yaml", i+1)))
		procs[i] = p
	}
	// Every node sees three alive members.
	deadline := time.Now().Add(20 * time.Second)
	for _, p := range procs {
		for {
			body := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", p.admin))
			if strings.Contains(body, `mendmq_cluster_members{state="alive"} 3`) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node on admin %d never saw 3 alive members:\n%s", p.admin, p.out)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// A subscriber on node2; publishers on node1 and node3. The route
	// replicates asynchronously, so publish until the first arrives.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	sub := exec.CommandContext(ctx, "mosquitto_sub", "-h", "127.0.0.1", "-p", "1884", "-q", "1", "-t", "x/#", "-v", "-C", "3")
	var out strings.Builder
	sub.Stdout = &out
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	waitSubscriptions(t, procs[0].admin, "node2")
	waitSubscriptions(t, procs[2].admin, "node2")
	for i, pub := range []struct {
		port int
		qos  string
	}{{1883, "1"}, {1885, "2"}, {1883, "0"}} {
		if o, err := mosq(t, "mosquitto_pub", pub.port, "-q", pub.qos, "-t", fmt.Sprintf("x/%d", i), "-m", fmt.Sprintf("m%d", i)); err != nil {
			t.Fatalf("pub: %v %s", err, o)
		}
	}
	if err := sub.Wait(); err != nil {
		t.Fatalf("subscriber: %v (got %q)", err, out.String())
	}
	if got := out.String(); got != "x/0 m0\nx/1 m1\nx/2 m2\n" {
		t.Fatalf("cross-node delivery: got %q", got)
	}

	// Retained on node3, read on node1.
	if o, err := mosq(t, "mosquitto_pub", 1885, "-q", "1", "-r", "-t", "r/1", "-m", "kept"); err != nil {
		t.Fatalf("retained pub: %v %s", err, o)
	}
	var got string
	for time.Now().Before(deadline.Add(10 * time.Second)) {
		o, _ := mosq(t, "mosquitto_sub", 1883, "-t", "r/1", "-C", "1", "-W", "1", "-v")
		if got = strings.TrimSpace(o); got == "r/1 kept" {
			break
		}
	}
	if got != "r/1 kept" {
		t.Fatalf("retained from another node: %q", got)
	}

	// A persistent session moves from node1 to node2 with its queue.
	if o, err := mosq(t, "mosquitto_sub", 1883, "-c", "-i", "mover", "-q", "1", "-t", "q/#", "-E"); err != nil {
		t.Fatalf("persistent subscribe: %v %s", err, o)
	}
	waitSubscriptions(t, procs[2].admin, "node1")
	if o, err := mosq(t, "mosquitto_pub", 1885, "-q", "1", "-t", "q/1", "-m", "while-away"); err != nil {
		t.Fatalf("pub while away: %v %s", err, o)
	}
	o, err := mosq(t, "mosquitto_sub", 1884, "-c", "-i", "mover", "-q", "1", "-t", "q/#", "-C", "1", "-W", "5", "-v")
	if err != nil || strings.TrimSpace(o) != "q/1 while-away" {
		t.Fatalf("moved session lost its queued message: %q (%v)\nnode1:\n%s\nnode2:\n%s", o, err, procs[0].out, procs[1].out)
	}

	// ctl sees the cluster.
	ctl := exec.Command(binPath, "ctl", "--admin", "127.0.0.1:8082", "cluster", "status")
	cout, err := ctl.CombinedOutput()
	if err != nil || strings.Count(string(cout), "alive") != 3 {
		t.Fatalf("ctl cluster status: %v\n%s", err, cout)
	}

	for _, p := range procs {
		if err := p.stop(t); err != nil {
			t.Fatalf("stop: %v\n%s", err, p.out)
		}
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return b.String()
}

// waitSubscriptions waits until the node behind admin port sees at least
// one subscription hosted on node.
func waitSubscriptions(t *testing.T, admin int, node string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	want := fmt.Sprintf("%q: ", node)
	for time.Now().Before(deadline) {
		body := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/api/v1/cluster", admin))
		if i := strings.Index(body, `"subscriptions"`); i >= 0 && strings.Contains(body[i:], want) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("node on admin %d never saw a subscription on %s", admin, node)
}
