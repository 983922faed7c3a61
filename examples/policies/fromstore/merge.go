package main

import (
	"bytes"
	"errors"

	"github.com/mendmq/mendmq/sdk"
	"github.com/mendmq/mendmq/sdk/mapstore"
)

// Merge keeps the copy of the key that the map's MapStore holds on the node
// deciding the merge: a stored value equal to one of the two copies keeps
// that copy, any other is put with a version above all three. Keys the
// store does not hold, and maps without a store, fall back to latestupdate
// (the entry updated last wins, the merging one on a tie). A store that
// cannot be read fails the merge: the entry is parked, not guessed at.
func Merge(mapName string, merging, existing *sdk.EntryView) sdk.Result {
	stored, err := mapstore.Get(merging.Key)
	switch {
	case errors.Is(err, mapstore.ErrNotFound), errors.Is(err, mapstore.ErrNoStore):
		if existing == nil || merging.LastUpdateTime >= existing.LastUpdateTime {
			return sdk.TakeMerging()
		}
		return sdk.KeepExisting()
	case err != nil:
		return sdk.Fail("fromstore: " + err.Error())
	}
	if existing != nil && bytes.Equal(stored.Value, existing.Value) {
		return sdk.KeepExisting()
	}
	if bytes.Equal(stored.Value, merging.Value) {
		return sdk.TakeMerging()
	}
	v := max(stored.Version, merging.Version)
	if existing != nil {
		v = max(v, existing.Version)
	}
	stored.Version = v + 1
	return sdk.Put(stored)
}
