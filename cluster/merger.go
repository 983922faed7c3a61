package cluster

import (
	"context"

	"github.com/mendmq/mendmq/cluster/merge"
)

// latestUpdate is the Merger of a node built without one (Config.Merger
// nil, as in tests of the cluster alone): the merging entry wins unless
// the existing one was updated later — Hazelcast's LatestUpdateMergePolicy,
// ties to merging, the rule of the latestupdate built-in.
type latestUpdate struct{}

func (latestUpdate) MergeBatch(_ context.Context, _ string, items []merge.Item) ([]merge.Result, error) {
	out := make([]merge.Result, len(items))
	for i, it := range items {
		if it.Existing != nil && it.Existing.LastUpdateTime > it.Merging.LastUpdateTime {
			out[i] = merge.Result{Verdict: merge.KeepExisting}
		} else {
			out[i] = merge.Result{Verdict: merge.TakeMerging, Entry: it.Merging}
		}
	}
	return out, nil
}
