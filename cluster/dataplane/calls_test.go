package dataplane

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestCallConcurrencyBound checks that at most MaxConcurrentCalls
// handlers run at once per connection, that a further call holds the
// connection's reader (back-pressure: a one-way frame sent after it is
// not handled), and that the call workers serve every call once slots
// free up.
func TestCallConcurrencyBound(t *testing.T) {
	const limit, calls = 3, 10
	var running, peak atomic.Int64
	started := make(chan struct{}, calls)
	release := make(chan struct{})
	hb := newHandler()
	hb.call = func(_ string, _ uint8, p []byte) ([]byte, error) {
		n := running.Add(1)
		for {
			old := peak.Load()
			if n <= old || peak.CompareAndSwap(old, n) {
				break
			}
		}
		started <- struct{}{}
		<-release
		running.Add(-1)
		return p, nil
	}
	a := startPlane(t, "a", newHandler(), nil)
	b := startPlane(t, "b", hb, func(c *Config) { c.MaxConcurrentCalls = limit })
	link(t, a, b)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, calls)
	call := func(i int) {
		defer wg.Done()
		got, err := a.Call(ctx, "b", 1, []byte{byte(i)})
		if err == nil && (len(got) != 1 || got[0] != byte(i)) {
			t.Errorf("call %d answered %v", i, got)
		}
		errs <- err
	}
	// The limit's worth first, then one more that must wait.
	for i := range limit {
		wg.Add(1)
		go call(i)
	}
	for range limit {
		select {
		case <-started:
		case <-ctx.Done():
			t.Fatal("handlers did not start")
		}
	}
	wg.Add(1)
	go call(limit)
	// The extra call is on the wire before the frame (one connection,
	// in order) once its Stats show it sent.
	waitUntil(t, 3*time.Second, "extra call sent", func() bool {
		s, _ := a.PeerStats("b")
		return s.FramesSent >= limit+1
	})
	if err := a.Send("b", 7, []byte("after")); err != nil {
		t.Fatal(err)
	}
	if err := hb.waitFramesOK(1, 100*time.Millisecond); err == nil {
		t.Fatal("a one-way frame was handled while the reader should wait for a call slot")
	}
	close(release)
	hb.waitFrames(t, 1, 3*time.Second)
	for i := limit + 1; i < calls; i++ {
		wg.Add(1)
		go call(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if p := peak.Load(); p != limit {
		t.Fatalf("peak concurrent handlers %d, want %d", p, limit)
	}
}

// inlineHandler is a testHandler whose calls of type inlineType run on
// the connection's reader (InlineCaller).
type inlineHandler struct{ *testHandler }

const inlineType = 5

func (h inlineHandler) InlineCall(typ uint8) bool { return typ == inlineType }

// TestInlineCalls checks that a call of a type the Handler's InlineCall
// accepts runs on the connection's reader (a one-way frame sent after
// it waits for it) and is answered, while other calls still run on
// workers (a frame sent after one is handled while it runs).
func TestInlineCalls(t *testing.T) {
	for _, tc := range []struct {
		name      string
		typ       uint8
		frameWait bool // the frame waits for the call
	}{
		{"inline", inlineType, true},
		{"worker", inlineType + 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			started := make(chan struct{}, 1)
			release := make(chan struct{})
			hb := newHandler()
			hb.call = func(_ string, _ uint8, p []byte) ([]byte, error) {
				started <- struct{}{}
				<-release
				return append([]byte("done:"), p...), nil
			}
			a := startPlane(t, "a", newHandler(), nil)
			b := startPlane(t, "b", inlineHandler{hb}, nil)
			link(t, a, b)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			type result struct {
				p   []byte
				err error
			}
			res := make(chan result, 1)
			go func() {
				p, err := a.Call(ctx, "b", tc.typ, []byte("x"))
				res <- result{p, err}
			}()
			select {
			case <-started:
			case <-ctx.Done():
				t.Fatal("call not handled")
			}
			if err := a.Send("b", 7, []byte("after")); err != nil {
				t.Fatal(err)
			}
			err := hb.waitFramesOK(1, 200*time.Millisecond)
			if tc.frameWait && err == nil {
				t.Fatal("a one-way frame was handled while an inline call held the reader")
			}
			if !tc.frameWait && err != nil {
				t.Fatalf("a call on a worker held the reader: %v", err)
			}
			close(release)
			hb.waitFrames(t, 1, 3*time.Second)
			r := <-res
			if r.err != nil || string(r.p) != "done:x" {
				t.Fatalf("call answered %q, %v", r.p, r.err)
			}
		})
	}
}
