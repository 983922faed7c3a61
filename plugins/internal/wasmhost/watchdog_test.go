package wasmhost

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mendmq/mendmq/plugins/internal/abi"
)

// waitFor polls cond until it holds or 5 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestWatchdogWakesFromSleep: after the watchdog went to sleep (no call for
// a few ticks), the next call that loops is still stopped as a timeout, and
// a benign call is never stopped however long the instance sat idle.
func TestWatchdogWakesFromSleep(t *testing.T) {
	o := opts()
	o.CallTimeout = 50 * time.Millisecond
	m := compile(t, hostile(t, "loop"), o)
	in := instantiate(t, m)
	defer in.Close(context.Background())
	ctx := context.Background()
	fine := []abi.Item{{Merging: entry("k", 1)}}
	if _, err := in.Merge(ctx, "fine", fine); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the watchdog to sleep", m.wd.sleeping.Load)
	if _, err := in.Merge(ctx, "fine", fine); err != nil {
		t.Fatalf("benign merge after idle: %v", err)
	}
	waitFor(t, "the watchdog to sleep again", m.wd.sleeping.Load)
	start := time.Now()
	_, err := in.Merge(ctx, "evil", []abi.Item{{Merging: entry("boom", 1)}})
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("error %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d < o.CallTimeout {
		t.Fatalf("stopped after %v, before the %v deadline", d, o.CallTimeout)
	}
	t.Logf("stopped after %v (timeout %v, tick %v)", time.Since(start), o.CallTimeout, m.wd.tick)
	if _, err := in.Merge(ctx, "fine", fine); err == nil {
		t.Fatal("a stopped instance kept working")
	}
}

// TestStaleStopSparesNextCall: a stop aimed at a call that has already
// ended (the watchdog or a caller's context firing late) must not stop the
// next call on the same instance.
func TestStaleStopSparesNextCall(t *testing.T) {
	bin, err := goLatestUpdate()
	if err != nil {
		t.Fatal(err)
	}
	m := compile(t, bin, opts())
	in := instantiate(t, m)
	defer in.Close(context.Background())
	items := []abi.Item{{Merging: entry("k", 2), Existing: entry("k", 1)}}
	for i := range 3 {
		stale := in.lastTok
		in.stopCall(stale, context.DeadlineExceeded)
		res, err := in.Merge(context.Background(), "m", items)
		if err != nil || len(res) != 1 || res[0].Verdict != abi.TakeMerging {
			t.Fatalf("call %d after a stale stop: %+v, %v", i, res, err)
		}
		if in.ctx.Err() != nil {
			t.Fatalf("call %d: the instance's context ended: %v", i, in.ctx.Err())
		}
	}
	// A caller context that ends after its call returned changes nothing.
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := in.Merge(ctx, "m", items); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := in.Merge(context.Background(), "m", items); err != nil {
		t.Fatalf("after a late cancel: %v", err)
	}
}

// TestCanceledBeforeCall: a caller context that has already ended stops
// nothing and is reported as ErrCanceled without running the guest.
func TestCanceledBeforeCall(t *testing.T) {
	m := compile(t, hostile(t, "loop"), opts())
	in := instantiate(t, m)
	defer in.Close(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := in.Merge(ctx, "evil", []abi.Item{{Merging: entry("boom", 1)}})
	if !errors.Is(err, ErrCanceled) || !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want ErrCanceled wrapping context.Canceled", err)
	}
}

func TestCompileRefusesNoCallTimeout(t *testing.T) {
	o := opts()
	o.CallTimeout = 0
	if _, err := Compile(context.Background(), hostile(t, "loop"), o); err == nil {
		t.Fatal("Compile accepted CallTimeout 0")
	}
}
