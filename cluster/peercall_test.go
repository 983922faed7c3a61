package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/cluster/clustertest"
	"github.com/mendmq/mendmq/cluster/dataplane"
)

// Test message types of the broker's range.
const (
	callEcho  = cluster.FirstBrokerCall
	callFail  = cluster.FirstBrokerCall + 1
	callBlock = cluster.LastBrokerCall
)

// TestBrokerCalls: the broker's own calls (HandleCall, Call) reach the
// node asked and carry its answer or its error; a node cut off by a
// netsplit is refused at once, a node that does not answer in time is
// reported unreachable at the caller's deadline, and the ranges and
// start-up order are enforced.
func TestBrokerCalls(t *testing.T) {
	t.Parallel()
	nw := clustertest.New(t, clustertest.Config{})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var nodes []*cluster.Node
	seed := ""
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("n%d", i)
		n, addr := startNodeWith(t, nw, name, seed, nil, func(n *cluster.Node) {
			for typ, f := range map[uint8]func(string, []byte) ([]byte, error){
				callEcho: func(from string, p []byte) ([]byte, error) {
					return fmt.Appendf(nil, "%s from %s: %s", name, from, p), nil
				},
				callFail: func(string, []byte) ([]byte, error) { return nil, errors.New("no such thing here") },
				callBlock: func(string, []byte) ([]byte, error) {
					<-release
					return nil, nil
				},
			} {
				if err := n.HandleCall(typ, f); err != nil {
					t.Fatalf("%s: register %d: %v", name, typ, err)
				}
			}
			if err := n.HandleCall(cluster.FirstBrokerCall-1, nil); err == nil {
				t.Errorf("%s: registered a call type of the cluster's range", name)
			}
			if err := n.HandleCall(callEcho, nil); err == nil {
				t.Errorf("%s: registered a call type twice", name)
			}
		})
		if seed == "" {
			seed = addr
		}
		nodes = append(nodes, n)
	}
	n1 := nodes[0]
	waitFor(t, 10*time.Second, "the cluster to form", func() (bool, string) {
		for _, n := range nodes {
			ps := n.Peers()
			if len(ps) != 2 || !ps[0].Reachable || !ps[1].Reachable {
				return false, fmt.Sprintf("%s: peers %+v", n.Name(), ps)
			}
		}
		return true, ""
	})
	if err := n1.HandleCall(cluster.LastBrokerCall-1, nil); err == nil {
		t.Error("HandleCall after Start succeeded")
	}

	ctx := func(d time.Duration) context.Context {
		c, cancel := context.WithTimeout(context.Background(), d)
		t.Cleanup(cancel)
		return c
	}
	for _, tc := range []struct {
		name    string
		node    string
		typ     uint8
		timeout time.Duration // 0: 5 s
		want    string
		wantErr func(error) bool
	}{
		{"answer", "n2", callEcho, 0, "n2 from n1: hi", nil},
		{"handler error", "n3", callFail, 0, "", func(err error) bool {
			var re *dataplane.RemoteError
			return errors.As(err, &re) && re.Msg == "no such thing here"
		}},
		{"self", "n1", callEcho, 0, "", func(err error) bool { return err != nil }},
		{"unknown member", "n9", callEcho, 0, "", func(err error) bool { return errors.Is(err, cluster.ErrUnknownMember) }},
		{"cluster's range", "n2", 19, 0, "", func(err error) bool { return err != nil }},
		{"no answer in time", "n2", callBlock, 300 * time.Millisecond, "", func(err error) bool {
			return errors.Is(err, cluster.ErrPeerUnreachable) && errors.Is(err, context.DeadlineExceeded)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := tc.timeout
			if d == 0 {
				d = 5 * time.Second
			}
			b, err := n1.Call(ctx(d), tc.node, tc.typ, []byte("hi"))
			if tc.wantErr == nil {
				if err != nil || string(b) != tc.want {
					t.Fatalf("Call: %q, %v; want %q", b, err, tc.want)
				}
				return
			}
			if !tc.wantErr(err) {
				t.Fatalf("Call: %q, %v: not the error expected", b, err)
			}
		})
	}

	// n1 cut off from n2: refused at once, once the detector saw it;
	// n3 still answers.
	nw.Cut("n1", "n2")
	waitFor(t, 10*time.Second, "n1 to find n2 unreachable", func() (bool, string) {
		return slices.Contains(unreachable(n1), "n2"), fmt.Sprint(unreachable(n1))
	})
	start := time.Now()
	_, err := n1.Call(ctx(5*time.Second), "n2", callEcho, nil)
	if !errors.Is(err, cluster.ErrPeerUnreachable) || time.Since(start) > time.Second {
		t.Errorf("Call to a node cut off: %v after %v; want ErrPeerUnreachable at once", err, time.Since(start))
	}
	for _, p := range n1.Peers() {
		if p.Reachable != (p.Name == "n3") {
			t.Errorf("n1.Peers: %+v", p)
		}
	}
	if b, err := n1.Call(ctx(5*time.Second), "n3", callEcho, []byte("still")); err != nil || string(b) != "n3 from n1: still" {
		t.Errorf("Call to n3 during the cut: %q, %v", b, err)
	}
	nw.Heal()
	waitFor(t, 10*time.Second, "n2 back", func() (bool, string) {
		b, err := n1.Call(ctx(time.Second), "n2", callEcho, []byte("back"))
		return err == nil && string(b) == "n2 from n1: back", fmt.Sprintf("%q %v", b, err)
	})
}
