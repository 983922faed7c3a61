package wasmhost

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
)

// ErrPoolClosed is returned by Get after Close.
var ErrPoolClosed = errors.New("instance pool closed")

// Pool keeps up to Size instances of one module for concurrent merges.
// Instances are created on demand by the Get that needs one (a Go guest
// takes milliseconds to start, a C guest microseconds) and kept idle after
// use. Close may run while instances are in use: each is closed when it
// comes back, and the module itself when the last one is gone.
type Pool struct {
	mod  *Module
	idle chan *Instance
	// slots holds one token per live instance (idle, in use or starting).
	slots  chan struct{}
	closed atomic.Bool
	once   sync.Once
	// OnDiscard, if set before use, is called after an instance is
	// discarded (metrics).
	OnDiscard func()
}

// NewPool returns a pool of at most size instances of mod. first, if not
// nil, is an already started instance (the one validation used).
func NewPool(mod *Module, size int, first *Instance) *Pool {
	size = max(size, 1)
	p := &Pool{mod: mod, idle: make(chan *Instance, size), slots: make(chan struct{}, size)}
	if first != nil {
		p.slots <- struct{}{}
		p.idle <- first
	}
	return p
}

// Module returns the pool's module.
func (p *Pool) Module() *Module { return p.mod }

// Get returns an idle instance, starts a new one if the pool has room, or
// waits for one to come back until ctx ends.
func (p *Pool) Get(ctx context.Context) (*Instance, error) {
	if p.closed.Load() {
		return nil, ErrPoolClosed
	}
	select {
	case in := <-p.idle:
		return in, nil
	default:
	}
	select {
	case in := <-p.idle:
		return in, nil
	case p.slots <- struct{}{}:
		in, err := p.mod.Instantiate(ctx)
		if err != nil {
			p.release()
			return nil, err
		}
		if p.closed.Load() {
			_ = in.Close(context.Background())
			p.release()
			return nil, ErrPoolClosed
		}
		return in, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Put returns a healthy instance for reuse.
func (p *Pool) Put(in *Instance) {
	if p.closed.Load() {
		p.drop(in)
		return
	}
	p.idle <- in // never blocks: at most cap(slots) instances exist
	if p.closed.Load() {
		// Close ran between the check and the send: drain what it missed.
		p.drain()
	}
}

// Discard closes an instance that must not be reused (after any error).
func (p *Pool) Discard(in *Instance) {
	if p.OnDiscard != nil {
		p.OnDiscard()
	}
	p.drop(in)
}

func (p *Pool) drop(in *Instance) {
	_ = in.Close(context.Background())
	p.release()
}

// release frees a slot and closes the module once the pool is closed and
// empty.
func (p *Pool) release() {
	<-p.slots
	if p.closed.Load() && len(p.slots) == 0 {
		p.once.Do(func() { _ = p.mod.Close(context.Background()) })
	}
}

func (p *Pool) drain() {
	for {
		select {
		case in := <-p.idle:
			p.drop(in)
		default:
			return
		}
	}
}

// Close closes idle instances now and the rest as they come back.
func (p *Pool) Close() {
	if p.closed.Swap(true) {
		return
	}
	p.drain()
	if len(p.slots) == 0 {
		p.once.Do(func() { _ = p.mod.Close(context.Background()) })
	}
}

// Live is the number of instances alive (idle, in use or starting).
func (p *Pool) Live() int { return len(p.slots) }
