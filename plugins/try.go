package plugins

import (
	"context"
	"errors"
	"fmt"

	"github.com/mendmq/mendmq/plugins/internal/abi"
)

// ErrPolicyNotLoaded: Try was asked for a policy the running set does
// not hold (only policies some map uses are loaded).
var ErrPolicyNotLoaded = errors.New("plugins: policy not loaded")

// TryResult is what a running policy decided in a dry run (Try).
type TryResult struct {
	Policy string `json:"policy"`
	SHA256 string `json:"sha256"`
	Map    string `json:"map"`
	// Verdict is keep_existing, take_merging, put, delete or fail.
	Verdict string `json:"verdict"`
	// Reason says why for fail: the policy's own reason, or how it
	// failed (trap, timeout, memory).
	Reason string `json:"reason,omitempty"`
	// Entry is the entry the policy built, for put.
	Entry *EntryView `json:"entry,omitempty"`
}

// Try runs one merge through a running policy — named, or mapName's
// when policyName is empty — the way a heal would, without its effects:
// nothing is parked, counted or logged, and no map changes. Operators
// and authors use it to see what the loaded module decides for given
// entries (POST /api/v1/policies/test). existing is nil for an absent
// key. Errors: ErrPolicyNotLoaded, ErrClosed, the context's.
func (r *Registry) Try(ctx context.Context, policyName, mapName string, merging, existing *EntryView) (TryResult, error) {
	if merging == nil {
		return TryResult{}, errors.New("plugins: Try needs a merging entry")
	}
	s, err := r.acquire()
	if err != nil {
		return TryResult{}, err
	}
	defer s.release()
	p := s.policyFor(mapName)
	if policyName != "" {
		if p = s.policies[policyName]; p == nil {
			return TryResult{}, fmt.Errorf("%w: %q (loaded are the policies a map uses; test a module file with mendmq policy test)", ErrPolicyNotLoaded, policyName)
		}
	}
	res := TryResult{Policy: p.name, SHA256: p.sha256, Map: mapName}
	inst, err := p.pool.Get(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return TryResult{}, ctx.Err()
		}
		res.Verdict, res.Reason = abi.Fail.String(), fmt.Sprintf("start instance: %v", err)
		return res, nil
	}
	dec, err := inst.Merge(ctx, mapName, []MergeItem{{Merging: merging, Existing: existing}})
	if err != nil {
		p.pool.Discard(inst)
		if ctx.Err() != nil {
			return TryResult{}, ctx.Err()
		}
		res.Verdict, res.Reason = abi.Fail.String(), fmt.Sprintf("%s: %v", failureKind(err), err)
		return res, nil
	}
	d := dec[0]
	res.Verdict, res.Reason = d.Verdict.String(), d.Reason
	if d.Verdict == Put && d.Entry != nil {
		e := *d.Entry // dec aliases the instance's buffers: copy before returning it
		e.Key, e.Value = append([]byte(nil), e.Key...), append([]byte(nil), e.Value...)
		res.Entry = &e
	}
	p.pool.Put(inst)
	return res, nil
}
