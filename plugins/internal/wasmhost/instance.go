package wasmhost

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"

	"github.com/tetratelabs/wazero/api"

	"github.com/mendmq/mendmq/plugins/internal/abi"
)

// yieldEvery: guestCall yields the processor once per this many calls.
const yieldEvery = 8

// Instance is one running copy of a module. It is not safe for concurrent
// use; Pool hands each instance to one caller at a time.
type Instance struct {
	mod          api.Module
	mem          api.Memory
	alloc, merge api.Function
	batch        api.Function // nil when the module has no merge_batch
	out          *tail
	// ctx is what every guest call runs under; ending it stops the guest
	// (see watchdog.go). wd watches running.
	ctx *callCtx
	wd  *watchdog
	// running is the running call's token, 0 between calls, callStopped
	// once a call was stopped. lastTok is the last token handed out.
	running atomic.Int64
	lastTok int64
	calls   uint32 // guest calls made, to pace the yields in guestCall
	// inPtr/inCap locate the guest's input buffer (from mendmq_alloc).
	inPtr, inCap uint32
	stack        [2]uint64
	results      []abi.Decoded // reused by Merge
	// usesStored: the module imports the stored-entry function, which
	// stored answers and state scopes to the running merge call.
	usesStored bool
	stored     StoreLookup
	state      callState
}

// Merge runs items through the policy and returns one result per item; the
// slice is reused by the next Merge on this instance. It uses merge_batch
// for several items when the module exports it, else one merge call per
// item. Any error wraps one of ErrTrap, ErrTimeout, ErrGarbage, ErrCanceled
// or ErrRequest, and (except for ErrRequest) leaves the instance unusable.
func (in *Instance) Merge(ctx context.Context, mapName string, items []abi.Item) ([]abi.Decoded, error) {
	out := in.results[:0]
	var err error
	switch {
	case len(items) == 0:
	case len(items) == 1 || in.batch == nil:
		for i := range items {
			if out, err = in.call(ctx, in.merge, mapName, items[i:i+1], out); err != nil {
				break
			}
		}
	default:
		out, err = in.call(ctx, in.batch, mapName, items, out)
	}
	in.results = out
	return out, err
}

// call encodes items into the guest's input buffer, calls fn under the
// per-call deadline and decodes the answer, appending to out.
func (in *Instance) call(ctx context.Context, fn api.Function, mapName string, items []abi.Item, out []abi.Decoded) ([]abi.Decoded, error) {
	size, err := abi.RequestSize(mapName, items)
	if err != nil {
		return out, fmt.Errorf("%w: %w", ErrRequest, err)
	}
	tok, err := in.begin(ctx)
	if err != nil {
		return out, err
	}
	// The caller's context stops the call too; one that cannot end (the
	// common Background) costs nothing.
	var unwatch func() bool
	if ctx.Done() != nil {
		unwatch = context.AfterFunc(ctx, func() { in.stopCall(tok, context.Canceled) })
	}
	err = in.guestCall(ctx, fn, size, items, mapName)
	if unwatch != nil {
		unwatch()
	}
	if !in.running.CompareAndSwap(tok, 0) && err == nil {
		// Stopped after the guest returned but before the call ended: the
		// call did overrun (or its caller gave up), and the instance's
		// context has ended, so it cannot be used again.
		err = in.stoppedErr(ctx)
	}
	if err != nil {
		return out, err
	}
	ptr, n := uint32(in.stack[0]>>32), uint32(in.stack[0])
	if n == 0 {
		return out, fmt.Errorf("%w: %s returned no result (the module refused the request or ran out of memory)%s",
			ErrGarbage, fn.Definition().ExportNames()[0], in.out.suffix())
	}
	view, ok := in.mem.Read(ptr, n)
	if !ok {
		return out, fmt.Errorf("%w: result [%d, %d) lies outside the %d bytes of guest memory",
			ErrGarbage, ptr, uint64(ptr)+uint64(n), in.mem.Size())
	}
	start := len(out)
	res, err := abi.DecodeResults(view, items, out[start:])
	return append(out[:start], res...), err
}

// guestCall encodes the request into guest memory and calls fn, leaving its
// result in in.stack[0].
func (in *Instance) guestCall(ctx context.Context, fn api.Function, size int, items []abi.Item, mapName string) error {
	buf, err := in.request(ctx, uint32(size))
	if err != nil {
		return err
	}
	abi.EncodeRequest(buf, mapName, items)
	in.stack[0], in.stack[1] = uint64(in.inPtr), uint64(size)
	if in.usesStored {
		// The host function answers during this call only (not during
		// mendmq_alloc above), for its map and keys.
		in.beginStored(mapName, items)
		err = fn.CallWithStack(in.ctx, in.stack[:])
		in.endStored()
	} else {
		err = fn.CallWithStack(in.ctx, in.stack[:])
	}
	// Under WithCloseOnContextDone wazero starts a goroutine per call that
	// waits for the call's context or its end. A caller that never blocks
	// (a heal loop, a benchmark) otherwise piles up thousands of them
	// between preemptions, each with its own stack, which costs more than
	// the merge. Yielding every yieldEvery calls lets the few pending ones
	// run and exit at once (they find their call over), on recycled
	// stacks. Measured on a single Go-module merge: 4.7 µs with no yield,
	// 3.6 µs yielding every call, 3.2 µs every 8.
	if in.calls++; in.calls%yieldEvery == 0 {
		runtime.Gosched()
	}
	if err != nil {
		return classify(ctx, err, in.out)
	}
	return nil
}

// begin starts a call: it hands out a token and publishes it for the
// watchdog.
func (in *Instance) begin(ctx context.Context) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrCanceled, err)
	}
	if in.running.Load() == callStopped {
		return 0, in.stoppedErr(ctx)
	}
	tok := max(in.wd.now(), in.lastTok+1)
	in.lastTok = tok
	in.running.Store(tok)
	in.wd.callStarted()
	return tok, nil
}

// stopCall stops the call holding tok, if it still runs: it ends the
// instance's context with why (context.DeadlineExceeded for the watchdog,
// context.Canceled for the caller), which makes wazero close the module.
// Tokens are positive, so no tok matches an idle instance (0).
func (in *Instance) stopCall(tok int64, why error) {
	if tok > 0 && in.running.CompareAndSwap(tok, callStopped) {
		in.ctx.end(why)
	}
}

// stoppedErr is the error of a call stopped by the watchdog or the caller.
func (in *Instance) stoppedErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrCanceled, err)
	}
	if errors.Is(in.ctx.Err(), context.Canceled) {
		return fmt.Errorf("%w: %w", ErrCanceled, context.Canceled)
	}
	return ErrTimeout
}

// request returns a view of the guest's input buffer holding at least size
// bytes, asking the guest for a larger one when needed.
func (in *Instance) request(ctx context.Context, size uint32) ([]byte, error) {
	if size > in.inCap || in.inPtr == 0 {
		want := max(uint64(size), 2*uint64(in.inCap), 4096)
		want = min(want, 1<<32-1)
		in.stack[0] = want
		if err := in.alloc.CallWithStack(in.ctx, in.stack[:]); err != nil {
			return nil, fmt.Errorf("call %s: %w", ExportAlloc, classify(ctx, err, in.out))
		}
		ptr := uint32(in.stack[0])
		if ptr == 0 {
			return nil, fmt.Errorf("%w: %s(%d) returned 0 (out of memory?)", ErrGarbage, ExportAlloc, want)
		}
		if _, ok := in.mem.Read(ptr, uint32(want)); !ok {
			return nil, fmt.Errorf("%w: %s(%d) returned %d, outside the %d bytes of guest memory",
				ErrGarbage, ExportAlloc, want, ptr, in.mem.Size())
		}
		in.inPtr, in.inCap = ptr, uint32(want)
	}
	buf, ok := in.mem.Read(in.inPtr, size)
	if !ok {
		return nil, fmt.Errorf("%w: input buffer lies outside guest memory", ErrGarbage)
	}
	return buf, nil
}

// MemorySize is the instance's current linear memory in bytes.
func (in *Instance) MemorySize() uint32 { return in.mem.Size() }

// Close releases the instance.
func (in *Instance) Close(ctx context.Context) error {
	in.wd.remove(in)
	return in.mod.Close(ctx)
}
