package wasmhost

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Deadlines without a timer per call.
//
// wazero stops a running guest (WithCloseOnContextDone) when the context of
// the call ends. A context.WithTimeout per merge costs a timer, a goroutine
// hand-off and several allocations — about as much as a small policy's whole
// merge. Instead every instance has one long-lived callCtx, and a watchdog
// per module ends it when a call has run longer than CallTimeout (checked
// every tick, so a call is stopped between CallTimeout and CallTimeout +
// tick). Ending it stops the guest for good; the instance is then discarded,
// as after any failed call.
//
// Every call gets a token, a non-zero number unique on its instance, stored
// in Instance.running while it runs. Whoever stops a call (the watchdog or
// the caller's context) and the call itself race for the token with a
// compare-and-swap, so a late watchdog can never stop the next call on the
// same instance.

// callStopped is Instance.running after a call was stopped: the instance's
// callCtx has ended and the instance is unusable.
const callStopped = -1

// Watchdog tick: a tenth of the call timeout, within these bounds.
const (
	minWatchTick = time.Millisecond
	maxWatchTick = 100 * time.Millisecond
	// idleTicks: ticks without a running call before the watchdog sleeps
	// until the next call starts.
	idleTicks = 4
)

// callCtx is the context an instance's guest calls run under. Done closes
// once, when a call is stopped; Err is then context.DeadlineExceeded or
// context.Canceled, which wazero turns into the module's exit code.
type callCtx struct {
	done chan struct{}
	err  atomic.Pointer[error]
	once sync.Once
	// inst is the instance, for a module importing the stored-entry host
	// function (which finds it through Value); nil otherwise.
	inst *Instance
}

func newCallCtx() *callCtx { return &callCtx{done: make(chan struct{})} }

// Deadline implements context.Context: the deadline is enforced by the
// watchdog, not announced.
func (c *callCtx) Deadline() (time.Time, bool) { return time.Time{}, false }

// Done implements context.Context.
func (c *callCtx) Done() <-chan struct{} { return c.done }

// Err implements context.Context.
func (c *callCtx) Err() error {
	if p := c.err.Load(); p != nil {
		return *p
	}
	return nil
}

// Value implements context.Context: the only value is the instance, for
// the stored-entry host function (stored.go).
func (c *callCtx) Value(key any) any {
	if _, ok := key.(instanceKey); ok && c.inst != nil {
		return c.inst
	}
	return nil
}

func (c *callCtx) end(err error) {
	c.once.Do(func() {
		c.err.Store(&err) // before close: Err is non-nil once Done is
		close(c.done)
	})
}

// watchdog stops the calls of one module's instances that overrun the
// call timeout. It runs while calls do and sleeps when none has run for a
// few ticks, so an idle broker pays no wake-ups.
type watchdog struct {
	timeout time.Duration
	tick    time.Duration
	epoch   time.Time // tokens are monotonic nanoseconds since epoch

	mu      sync.Mutex
	insts   map[*Instance]struct{}
	started bool // the goroutine runs
	closed  bool

	sleeping atomic.Bool
	wake     chan struct{} // capacity 1
	stop     chan struct{}
	done     chan struct{}
}

func newWatchdog(timeout time.Duration) *watchdog {
	return &watchdog{
		timeout: timeout,
		tick:    min(max(timeout/10, minWatchTick), maxWatchTick),
		epoch:   time.Now(),
		insts:   map[*Instance]struct{}{},
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
}

// now is the monotonic time since epoch, at least 1.
func (w *watchdog) now() int64 { return max(int64(time.Since(w.epoch)), 1) }

// add watches in; it starts the goroutine with the first instance. It
// reports false once the watchdog is closed.
func (w *watchdog) add(in *Instance) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false
	}
	w.insts[in] = struct{}{}
	if !w.started {
		w.started = true
		go w.run()
	}
	return true
}

func (w *watchdog) remove(in *Instance) {
	w.mu.Lock()
	delete(w.insts, in)
	w.mu.Unlock()
}

// close stops the goroutine and waits for it.
func (w *watchdog) close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	started := w.started
	w.mu.Unlock()
	close(w.stop)
	if started {
		<-w.done
	}
}

// callStarted wakes the watchdog if it sleeps. The caller has stored its
// token already: either the watchdog's last scan sees it, or this sees
// sleeping (both are sequentially consistent atomics).
func (w *watchdog) callStarted() {
	if w.sleeping.Load() && w.sleeping.CompareAndSwap(true, false) {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

func (w *watchdog) run() {
	defer close(w.done)
	t := time.NewTicker(w.tick)
	defer t.Stop()
	idle := 0
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
		}
		if w.scan() {
			idle = 0
			continue
		}
		if idle++; idle < idleTicks {
			continue
		}
		idle = 0
		t.Stop()
		w.sleeping.Store(true)
		if w.scan() {
			// A call started before it could see sleeping.
			w.sleeping.Store(false)
		} else {
			select {
			case <-w.stop:
				return
			case <-w.wake:
			}
		}
		t.Reset(w.tick)
	}
}

// scan stops the calls that overran and reports whether any call runs.
func (w *watchdog) scan() (busy bool) {
	now := w.now()
	limit := int64(w.timeout)
	w.mu.Lock()
	defer w.mu.Unlock()
	for in := range w.insts {
		tok := in.running.Load()
		if tok <= 0 {
			continue
		}
		busy = true
		if now-tok >= limit {
			in.stopCall(tok, context.DeadlineExceeded)
		}
	}
	return busy
}
