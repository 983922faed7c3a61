// Package merge is the contract between the cluster, which finds
// conflicting entries (retained messages and map entries written on both
// sides of a netsplit), and whatever decides them: the WebAssembly merge
// policies of package plugins. It holds only types, so that both sides
// import it and neither imports the other (DESIGN §1): cluster asks a
// Merger, plugins.Registry is one, and the broker passes one to the other.
//
// The types mirror the merge-policy ABI (sdk/ABI.md): an EntryView is what
// a policy sees of an entry, a Verdict what it decides.
package merge

import (
	"context"
	"fmt"
)

// EntryView is one map entry with the metadata mendmq keeps for it. All
// times are Unix milliseconds; 0 means never (ExpirationTime) or unknown.
// JSON uses the ABI's snake_case field names (Key and Value as base64).
type EntryView struct {
	// Key identifies the entry in its map (the topic for "$retained").
	Key []byte `json:"key"`
	// Value is the stored bytes (for "$retained" the retained message as
	// an MQTT 5 PUBLISH packet; sdk/ABI.md).
	Value []byte `json:"value"`
	// Cost is the entry's size in bytes as the owning node accounts it.
	Cost int64 `json:"cost"`
	// Hits counts reads of the entry.
	Hits int64 `json:"hits"`
	// Version starts at 0 and grows by one per update.
	Version int64 `json:"version"`
	// CreationTime is when the entry was first written.
	CreationTime int64 `json:"creation_time"`
	// LastAccessTime is the last read or write.
	LastAccessTime int64 `json:"last_access_time"`
	// LastUpdateTime is the last write.
	LastUpdateTime int64 `json:"last_update_time"`
	// LastStoredTime is the last write to a MapStore (0 if never).
	LastStoredTime int64 `json:"last_stored_time"`
	// ExpirationTime is when the entry expires; 0 means never.
	ExpirationTime int64 `json:"expiration_time"`
}

// Verdict is a policy's decision for one merge (its ABI wire value).
type Verdict uint32

// Verdicts of ABI version 1.
const (
	// KeepExisting leaves the existing entry; an absent one stays absent.
	KeepExisting Verdict = 0
	// TakeMerging stores the merging entry unchanged.
	TakeMerging Verdict = 1
	// Put stores an entry the policy built (same key as the merging one).
	Put Verdict = 2
	// Delete removes the key.
	Delete Verdict = 3
	// Fail means the policy refused to decide. It is a wire value only:
	// a Merger parks the merging entry and reports KeepExisting with a
	// ConflictID.
	Fail Verdict = 4
)

// String names the verdict in snake_case, as ABI.md and the CLI do.
func (v Verdict) String() string {
	switch v {
	case KeepExisting:
		return "keep_existing"
	case TakeMerging:
		return "take_merging"
	case Put:
		return "put"
	case Delete:
		return "delete"
	case Fail:
		return "fail"
	}
	return fmt.Sprintf("verdict(%d)", uint32(v))
}

// Item is one merge: Existing is nil when the key is absent on the side
// that is merged into.
type Item struct {
	Merging  *EntryView
	Existing *EntryView
}

// Result is the outcome of one merge.
type Result struct {
	// Verdict says what to do with the key.
	Verdict Verdict
	// Entry is what to store for TakeMerging (the caller's merging entry,
	// same pointer) and Put (a new entry owned by the caller); nil
	// otherwise.
	Entry *EntryView
	// ConflictID is non-zero when the policy failed on this entry: Verdict
	// is KeepExisting and the merging entry was parked under this id.
	ConflictID uint64
	// Unmerged is set when nothing happened: the policy failed and the
	// conflict store was full, or the call was canceled or the merger
	// closed. The caller still owns the merging entry; the method's error
	// says why.
	Unmerged bool
}

// Merger decides conflicts. Implemented by plugins.Registry.
//
// MergeBatch merges items of one map (mapName: "$retained" or a map's name)
// and returns one Result per item, in order. It is safe for concurrent use
// and may block up to its per-call timeout for each chunk of items; callers
// never hold a lock others need while calling it. The error is non-nil when
// some Result is Unmerged. A policy failure is not an error: that item's
// Result keeps the existing entry and carries a ConflictID. Results must be
// deterministic for a deterministic policy: every node merging the same
// items gets the same verdicts.
type Merger interface {
	MergeBatch(ctx context.Context, mapName string, items []Item) ([]Result, error)
}
