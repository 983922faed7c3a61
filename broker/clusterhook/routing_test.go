package clusterhook

import (
	"testing"
	"time"
)

// TestForwardContext checks the shared deadline of QoS 1/2 forwards: it
// is between ForwardTimeout less 1/forwardWindow of it and ForwardTimeout
// away, publishes of one window share it, and a later one gets a new one.
func TestForwardContext(t *testing.T) {
	const timeout = 100 * time.Millisecond
	h := &RoutingHook{sh: newShared(Options{ForwardTimeout: timeout})}
	check := func(d time.Time, before, after time.Time) {
		t.Helper()
		if d.Before(before.Add(timeout-timeout/forwardWindow)) || d.After(after.Add(timeout)) {
			t.Fatalf("deadline %v after the call, want within [%v, %v]", d.Sub(after),
				timeout-timeout/forwardWindow, timeout)
		}
	}
	t0 := time.Now()
	c1 := h.forwardContext()
	d1, ok := c1.Deadline()
	if !ok {
		t.Fatal("no deadline")
	}
	check(d1, t0, time.Now())
	if c2 := h.forwardContext(); c2 != c1 && time.Since(t0) < timeout/forwardWindow {
		t.Fatal("a publish within the window got its own context")
	}
	time.Sleep(2 * timeout / forwardWindow)
	t1 := time.Now()
	c3 := h.forwardContext()
	if c3 == c1 {
		t.Fatal("a publish after the window got the old context")
	}
	d3, _ := c3.Deadline()
	check(d3, t1, time.Now())
	select {
	case <-c1.Done():
	case <-time.After(2 * timeout):
		t.Fatal("shared context not done after its deadline")
	}
}
