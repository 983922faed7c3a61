// Package builtin holds the logic of mendmq's built-in merge policies, with
// Hazelcast's semantics. Each policy is compiled to its own WebAssembly
// module from the main packages next to this one (../passthrough, …) and
// embedded in the mendmq binary; the host tests run the same functions
// natively as the reference the modules are checked against.
//
// Shared rules, as in Hazelcast's com.hazelcast.spi.merge policies:
//   - With no existing entry, every policy but discard takes the merging
//     entry (a key present on only one side survives the heal).
//   - Comparing policies let the merging entry win ties (>=).
package builtin

import (
	"math"

	"github.com/mendmq/mendmq/sdk"
)

// PassThrough always stores the merging entry.
func PassThrough(_ string, _, _ *sdk.EntryView) sdk.Result { return sdk.TakeMerging() }

// PutIfAbsent stores the merging entry only when the key is absent; an
// existing entry always stays.
func PutIfAbsent(_ string, _, existing *sdk.EntryView) sdk.Result {
	if existing == nil {
		return sdk.TakeMerging()
	}
	return sdk.KeepExisting()
}

// HigherHits keeps the entry with more hits; the merging one wins ties.
func HigherHits(_ string, merging, existing *sdk.EntryView) sdk.Result {
	return takeIf(existing == nil || merging.Hits >= existing.Hits)
}

// LatestUpdate keeps the entry updated last; the merging one wins ties.
func LatestUpdate(_ string, merging, existing *sdk.EntryView) sdk.Result {
	return takeIf(existing == nil || merging.LastUpdateTime >= existing.LastUpdateTime)
}

// LatestAccess keeps the entry accessed last; the merging one wins ties.
func LatestAccess(_ string, merging, existing *sdk.EntryView) sdk.Result {
	return takeIf(existing == nil || merging.LastAccessTime >= existing.LastAccessTime)
}

// ExpirationTime keeps the entry that expires last; the merging one wins
// ties. An ExpirationTime of 0 means "never" and so counts as the latest, as
// Hazelcast's Long.MAX_VALUE does.
func ExpirationTime(_ string, merging, existing *sdk.EntryView) sdk.Result {
	return takeIf(existing == nil || expiry(merging) >= expiry(existing))
}

// Discard always keeps the existing entry; a key present only on the merging
// side is dropped.
func Discard(_ string, _, _ *sdk.EntryView) sdk.Result { return sdk.KeepExisting() }

func expiry(e *sdk.EntryView) int64 {
	if e.ExpirationTime == 0 {
		return math.MaxInt64
	}
	return e.ExpirationTime
}

func takeIf(merging bool) sdk.Result {
	if merging {
		return sdk.TakeMerging()
	}
	return sdk.KeepExisting()
}

// ByName maps each built-in policy's configuration name to its function.
var ByName = map[string]sdk.Policy{
	"passthrough":    PassThrough,
	"putifabsent":    PutIfAbsent,
	"higherhits":     HigherHits,
	"latestupdate":   LatestUpdate,
	"latestaccess":   LatestAccess,
	"expirationtime": ExpirationTime,
	"discard":        Discard,
}
