package clusterhook

import (
	"testing"
	"testing/synctest"
	"time"
)

// TestForwardContext checks the shared deadline of QoS 1/2 forwards: it
// is between ForwardTimeout less 1/forwardWindow of it and ForwardTimeout
// away, publishes of one window share it, and a later one gets a new one.
// It runs on synctest's clock: sleeping advances it, nothing waits.
func TestForwardContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const timeout = 100 * time.Millisecond
		h := &RoutingHook{sh: newShared(Options{ForwardTimeout: timeout})}
		check := func(d time.Time, at time.Time) {
			t.Helper()
			if d.Before(at.Add(timeout-timeout/forwardWindow)) || d.After(at.Add(timeout)) {
				t.Fatalf("deadline %v after the call, want within [%v, %v]", d.Sub(at),
					timeout-timeout/forwardWindow, timeout)
			}
		}
		t0 := time.Now()
		c1 := h.forwardContext()
		d1, ok := c1.Deadline()
		if !ok {
			t.Fatal("no deadline")
		}
		check(d1, t0)
		time.Sleep(timeout / forwardWindow / 2)
		if c2 := h.forwardContext(); c2 != c1 {
			t.Fatal("a publish within the window got its own context")
		}
		time.Sleep(2 * timeout / forwardWindow)
		t1 := time.Now()
		c3 := h.forwardContext()
		if c3 == c1 {
			t.Fatal("a publish after the window got the old context")
		}
		d3, _ := c3.Deadline()
		check(d3, t1)
		time.Sleep(timeout)
		select {
		case <-c1.Done():
		default:
			t.Fatal("shared context not done after its deadline")
		}
	})
}
