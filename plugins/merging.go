package plugins

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/mendmq/mendmq/plugins/internal/abi"
	"github.com/mendmq/mendmq/plugins/internal/wasmhost"
)

// The merge path: a call takes the current policy set, runs the map's
// policy on an instance of its pool, and parks what the policy fails on.

// acquire pins the current set. The loop only repeats while a swap races
// with it, and a swap stores the new set before releasing the old one.
func (r *Registry) acquire() (*policySet, error) {
	for range 1000 {
		s := r.cur.Load()
		if s == nil {
			return nil, ErrClosed
		}
		if s.tryRef() {
			return s, nil
		}
	}
	return nil, errors.New("plugins: could not pin the policy set (reloads in a tight loop?)")
}

// Merge runs one merge through mapName's policy ("$retained" uses
// retained.merge_policy, maps without their own use maps.default). existing
// is nil when the key is absent. A policy failure is not an error: the
// Result has Verdict KeepExisting and a ConflictID. Errors: ErrClosed, the
// caller's context error, ErrConflictsFull — each with Result.Unmerged set.
func (r *Registry) Merge(ctx context.Context, mapName string, merging, existing *EntryView) (Result, error) {
	if merging == nil {
		return Result{Unmerged: true}, errors.New("plugins: Merge needs a merging entry")
	}
	s, err := r.acquire()
	if err != nil {
		return Result{Unmerged: true}, err
	}
	defer s.release()
	items := [1]MergeItem{{Merging: merging, Existing: existing}}
	var out [1]Result
	err = r.run(ctx, s.policyFor(mapName), mapName, items[:], out[:])
	return out[0], err
}

// MergeBatch merges many entries of one map, using the module's merge_batch
// export (up to 256 entries or 1 MiB per call) — the fast path for healing
// a partition. It returns one Result per item, in order. When the policy
// fails on a batch it retries the entries one by one to park only those it
// fails on (after a timeout it parks the whole call's entries instead, so a
// looping policy costs one deadline per call, not per entry). The error is
// non-nil when some Result is Unmerged (see Merge).
func (r *Registry) MergeBatch(ctx context.Context, mapName string, items []MergeItem) ([]Result, error) {
	out := make([]Result, len(items))
	for i := range items {
		if items[i].Merging == nil {
			markUnmerged(out)
			return out, fmt.Errorf("plugins: MergeBatch item %d has no merging entry", i)
		}
	}
	s, err := r.acquire()
	if err != nil {
		markUnmerged(out)
		return out, err
	}
	defer s.release()
	p := s.policyFor(mapName)
	var firstErr error
	for start := 0; start < len(items); {
		end := chunkEnd(items, start)
		if err := r.run(ctx, p, mapName, items[start:end], out[start:end]); err != nil {
			if ctx.Err() != nil {
				markUnmerged(out[end:])
				return out, err
			}
			if firstErr == nil {
				firstErr = err
			}
		}
		start = end
	}
	return out, firstErr
}

// chunkEnd returns the end of the batch call starting at start.
func chunkEnd(items []MergeItem, start int) int {
	bytes := 0
	end := start
	for end < len(items) && end-start < maxBatchItems {
		n := len(items[end].Merging.Key) + len(items[end].Merging.Value)
		if e := items[end].Existing; e != nil {
			n += len(e.Key) + len(e.Value)
		}
		if end > start && bytes+n > maxBatchBytes {
			break
		}
		bytes += n
		end++
	}
	return end
}

// run merges items (one guest call's worth) on one instance of p and fills
// out.
func (r *Registry) run(ctx context.Context, p *policy, mapName string, items []MergeItem, out []Result) error {
	inst, err := p.pool.Get(ctx)
	if err != nil {
		if ctx.Err() != nil {
			markUnmerged(out)
			return ctx.Err()
		}
		return r.park(p, mapName, items, out, FailureUnavailable, fmt.Errorf("start instance: %w", err))
	}
	dec, err := inst.Merge(ctx, mapName, items)
	if err == nil {
		var parkErr error
		var counts verdictCounts
		for i, d := range dec {
			switch d.Verdict {
			case abi.Fail:
				if e := r.park(p, mapName, items[i:i+1], out[i:i+1], FailureRefused, errors.New("policy refused: "+d.Reason)); e != nil {
					parkErr = e
				}
			case TakeMerging:
				out[i] = Result{Verdict: TakeMerging, Entry: items[i].Merging}
			case Put:
				out[i] = Result{Verdict: Put, Entry: d.Entry}
			default:
				out[i] = Result{Verdict: d.Verdict}
			}
			counts[slot(&out[i])]++
		}
		// dec aliases the instance's buffers: return it only now.
		p.pool.Put(inst)
		r.observe(ctx, p, mapName, items, out, &counts)
		return parkErr
	}
	p.pool.Discard(inst)
	switch {
	case errors.Is(err, wasmhost.ErrCanceled):
		markUnmerged(out)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	case errors.Is(err, wasmhost.ErrRequest):
		markUnmerged(out)
		return err
	}
	kind := failureKind(err)
	if len(items) > 1 && kind != FailureTimeout {
		// Find the entries the policy fails on: each alone, on a fresh
		// instance when the previous one broke.
		var firstErr error
		for i := range items {
			if e := r.run(ctx, p, mapName, items[i:i+1], out[i:i+1]); e != nil {
				if ctx.Err() != nil {
					markUnmerged(out[i:])
					return e
				}
				if firstErr == nil {
					firstErr = e
				}
			}
		}
		return firstErr
	}
	parkErr := r.park(p, mapName, items, out, kind, err)
	var counts verdictCounts
	counts[failSlot] = len(items)
	r.observe(ctx, p, mapName, items, out, &counts)
	return parkErr
}

// observe adds counts (entries per verdictLabels slot, which the caller
// tallies while it fills out) to mendmq_policy_merges_total{policy,map,
// verdict} and, when the logger is enabled for debug, logs one line per
// entry. Entries the policy failed on count as verdict "fail". With debug
// off it costs a counter lookup, one Enabled check and an atomic add per
// verdict seen.
func (r *Registry) observe(ctx context.Context, p *policy, mapName string, items []MergeItem, out []Result, counts *verdictCounts) {
	c := p.merges.forMap(mapName)
	for v, k := range counts {
		if k > 0 {
			c[v].Add(float64(k))
		}
	}
	if !r.logger.Enabled(ctx, slog.LevelDebug) {
		return
	}
	for i := range out {
		attrs := []slog.Attr{
			slog.String("map", mapName),
			slog.String("key", string(clip(items[i].Merging.Key))),
			slog.String("verdict", verdictLabels[slot(&out[i])]),
			slog.Bool("existing", items[i].Existing != nil),
			slog.String("policy", p.name),
			slog.String("sha256", p.sha256),
		}
		if id := out[i].ConflictID; id != 0 {
			attrs = append(attrs, slog.Uint64("conflict", id))
		}
		r.logger.LogAttrs(ctx, slog.LevelDebug, "merge decided", attrs...)
	}
}

func failureKind(err error) FailureKind {
	switch {
	case errors.Is(err, wasmhost.ErrTimeout):
		return FailureTimeout
	case errors.Is(err, wasmhost.ErrGarbage):
		return FailureGarbage
	}
	return FailureTrap
}

func markUnmerged(out []Result) {
	for i := range out {
		out[i] = Result{Verdict: KeepExisting, Unmerged: true}
	}
}

func clip(b []byte) []byte {
	if len(b) > 128 {
		return b[:128]
	}
	return b
}
