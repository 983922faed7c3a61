package router

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/mendmq/mendmq/cluster/internal/wire"
	"github.com/mendmq/mendmq/cluster/outbox"
)

// forwardHold sends msg to the routable targets and holds it for the
// others (and for those whose call fails). Holding is all or nothing, so
// a publish refused for a full outbox is held nowhere.
func (r *Router) forwardHold(ctx context.Context, targets []target, id uint64, msg []byte) error {
	var held []outbox.Held
	var live []target
	for _, t := range targets {
		if r.members.Routable(t.node) {
			live = append(live, t)
		} else {
			held = append(held, outbox.Held{Peer: t.node, Payload: appendForward(nil, t.groups, id, msg)})
		}
	}
	if len(held) > 0 {
		if err := r.outbox.HoldAll(held); err != nil {
			r.stats.RefusedUnreachable.Add(1)
			return err
		}
		r.stats.Held.Add(uint64(len(held)))
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, t := range live {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.call(ctx, t, id, msg); err != nil {
				// Maybe delivered, maybe not: the receiver drops a
				// second copy by its id.
				if herr := r.outbox.Hold(t.node, appendForward(nil, t.groups, id, msg)); herr != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("%w; and cannot hold it: %w", err, herr))
					mu.Unlock()
					return
				}
				r.stats.Held.Add(1)
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		r.stats.RefusedUnreachable.Add(1)
	}
	return errors.Join(errs...)
}

// Kick makes the drain look at the outbox now (a member came back).
func (r *Router) Kick() {
	select {
	case r.drain <- struct{}{}:
	default:
	}
}

// drainEvery is how often the outbox is checked without a Kick.
const drainEvery = time.Second

// Drain batch bounds.
const (
	drainMessages = 256
	drainBytes    = 1 << 20
)

// Run drains the outbox to the peers that are routable again, in order,
// until ctx ends.
func (r *Router) Run(ctx context.Context) {
	if r.outbox == nil {
		return
	}
	t := time.NewTicker(drainEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.drain:
		case <-t.C:
		}
		for _, peer := range r.outbox.Peers() {
			if r.members.Routable(peer) {
				r.drainPeer(ctx, peer)
			}
		}
	}
}

// drainPeer sends peer what is held for it, a batch per call, until the
// queue is empty or a call fails (retried at the next round).
func (r *Router) drainPeer(ctx context.Context, peer string) {
	for ctx.Err() == nil {
		msgs := r.outbox.Peek(peer, drainMessages, drainBytes)
		if len(msgs) == 0 {
			return
		}
		b := binary.AppendUvarint(nil, uint64(len(msgs)))
		for _, m := range msgs {
			b = binary.AppendUvarint(b, uint64(len(m.Payload)))
			b = append(b, m.Payload...)
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := r.tr.Call(cctx, peer, CallHeld, b)
		cancel()
		if err != nil {
			return
		}
		if err := r.outbox.Remove(peer, msgs[len(msgs)-1].Seq); err != nil {
			return
		}
		r.stats.Drained.Add(uint64(len(msgs)))
	}
}

// handleHeld delivers a batch of held messages, each once.
func (r *Router) handleHeld(from string, payload []byte) ([]byte, error) {
	rd := wire.NewReader(payload)
	n := rd.Uvarint()
	if n > drainMessages*4 {
		rd.Fail("%d held messages in one call", n)
	}
	var errs []error
	for i := uint64(0); i < n && rd.Err() == nil; i++ {
		l := rd.Uvarint()
		rest := rd.Rest()
		if l > uint64(len(rest)) {
			rd.Fail("held message of %d bytes", l)
			break
		}
		if err := r.deliverOnce(from, rest[:l], true); err != nil {
			errs = append(errs, err)
		}
		rd = wire.NewReader(rest[l:])
	}
	if rd.Err() != nil {
		r.stats.BadMessages.Add(1)
		return nil, rd.Err()
	}
	return nil, errors.Join(errs...)
}

// DropHeld discards what is held for a member removed for good and
// forgets its delivered ids; it returns how many messages were dropped.
func (r *Router) DropHeld(peer string) (int, error) {
	r.seen.forget(peer)
	if r.outbox == nil {
		return 0, nil
	}
	return r.outbox.Drop(peer)
}

// Outbox is the router's outbox (nil without one).
func (r *Router) Outbox() *outbox.Outbox { return r.outbox }
