package wasmhost

import (
	"context"
	"fmt"
	"time"

	"github.com/tetratelabs/wazero/api"

	"github.com/mendmq/mendmq/plugins/internal/abi"
)

// Instance is one running copy of a module. It is not safe for concurrent
// use; Pool hands each instance to one caller at a time.
type Instance struct {
	mod          api.Module
	mem          api.Memory
	alloc, merge api.Function
	batch        api.Function // nil when the module has no merge_batch
	timeout      time.Duration
	out          *tail
	// inPtr/inCap locate the guest's input buffer (from mendmq_alloc).
	inPtr, inCap uint32
	stack        [2]uint64
	results      []abi.Decoded // reused by Merge
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
	cctx, cancel := context.WithTimeout(ctx, in.timeout)
	defer cancel()
	buf, err := in.request(ctx, cctx, uint32(size))
	if err != nil {
		return out, err
	}
	abi.EncodeRequest(buf, mapName, items)
	in.stack[0], in.stack[1] = uint64(in.inPtr), uint64(size)
	if err := fn.CallWithStack(cctx, in.stack[:]); err != nil {
		return out, classify(ctx, err, in.out)
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

// request returns a view of the guest's input buffer holding at least size
// bytes, asking the guest for a larger one when needed.
func (in *Instance) request(parent, ctx context.Context, size uint32) ([]byte, error) {
	if size > in.inCap || in.inPtr == 0 {
		want := max(uint64(size), 2*uint64(in.inCap), 4096)
		want = min(want, 1<<32-1)
		in.stack[0] = want
		if err := in.alloc.CallWithStack(ctx, in.stack[:]); err != nil {
			return nil, fmt.Errorf("call %s: %w", ExportAlloc, classify(parent, err, in.out))
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
func (in *Instance) Close(ctx context.Context) error { return in.mod.Close(ctx) }
