package dataplane_test

import (
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster/clustertest"
	"github.com/mendmq/mendmq/cluster/dataplane"
)

var _ dataplane.Network = (*clustertest.DataNetwork)(nil)

type countHandler struct{ n atomic.Int64 }

func (h *countHandler) HandleFrame(string, uint8, []byte) { h.n.Add(1) }
func (h *countHandler) HandleCall(string, uint8, []byte) ([]byte, error) {
	return []byte("ok"), nil
}

func startOn(t *testing.T, nw *clustertest.Network, name string, h dataplane.Handler) *dataplane.Plane {
	t.Helper()
	cfg := dataplane.LoopbackConfig()
	cfg.NodeName = name
	cfg.SecretKey = []byte("clustertest secret, 16+ bytes")
	cfg.Network = nw.DataNetwork(name)
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	p, err := dataplane.New(cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < d {
		if cond() {
			return time.Since(start)
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s", d, what)
	return 0
}

// TestCutSeenByDataPlane cuts a single link of three nodes: only that
// link becomes unreachable, in both directions, and it comes back after
// Heal.
func TestCutSeenByDataPlane(t *testing.T) {
	nw := clustertest.New(t, clustertest.Config{})
	planes := map[string]*dataplane.Plane{}
	for _, n := range []string{"a", "b", "c"} {
		planes[n] = startOn(t, nw, n, &countHandler{})
	}
	for from, p := range planes {
		for to, q := range planes {
			if from != to {
				if err := p.SetPeer(to, q.Addr().String()); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	reach := func(from, to string) bool { return planes[from].Reachable(to) }
	all := func() bool {
		for from := range planes {
			for to := range planes {
				if from != to && !reach(from, to) {
					return false
				}
			}
		}
		return true
	}
	eventually(t, 3*time.Second, "full mesh", all)

	nw.Cut("a", "b")
	d := eventually(t, 2*time.Second, "a<->b unreachable", func() bool { return !reach("a", "b") && !reach("b", "a") })
	t.Logf("cut noticed after %v", d)
	time.Sleep(100 * time.Millisecond)
	if !reach("a", "c") || !reach("c", "a") || !reach("b", "c") || !reach("c", "b") {
		t.Fatal("links to c were affected by the a<->b cut")
	}
	if _, err := planes["a"].Call(t.Context(), "b", 1, nil); err == nil {
		t.Fatal("call across a cut succeeded")
	}

	nw.Heal()
	eventually(t, 3*time.Second, "full mesh after heal", all)
}

// linkRecorder is a Handler that records link events (LinkObserver).
type linkRecorder struct {
	countHandler
	events chan string
}

func (h *linkRecorder) LinkChanged(peer string, up bool, err error) {
	s := peer + " down"
	if up {
		s = peer + " up"
	}
	h.events <- s
}

// TestLinkEvents: a LinkObserver hears the link come up, go down when it
// is cut, and come back after the heal, as events rather than by polling
// Reachable.
func TestLinkEvents(t *testing.T) {
	nw := clustertest.New(t, clustertest.Config{})
	rec := &linkRecorder{events: make(chan string, 64)}
	a := startOn(t, nw, "a", rec)
	b := startOn(t, nw, "b", &countHandler{})
	if err := a.SetPeer("b", b.Addr().String()); err != nil {
		t.Fatal(err)
	}
	expect := func(want string) {
		t.Helper()
		timeout := time.After(5 * time.Second)
		for {
			select {
			case got := <-rec.events:
				if got == want {
					return
				}
				if want == "b up" && got == "b down" {
					continue // a dial that lost the race with the listener
				}
				t.Fatalf("link event %q, want %q", got, want)
			case <-timeout:
				t.Fatalf("no link event %q", want)
			}
		}
	}
	expect("b up")
	nw.Cut("a", "b")
	expect("b down")
	nw.Heal()
	// Failed redials while cut may still be reported down first.
	timeout := time.After(5 * time.Second)
	for {
		select {
		case got := <-rec.events:
			if got == "b up" {
				return
			}
		case <-timeout:
			t.Fatal("the link did not come back up after the heal")
		}
	}
}
