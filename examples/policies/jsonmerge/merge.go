package main

import (
	"encoding/json"
	"fmt"

	"github.com/mendmq/mendmq/sdk"
)

// Field is one field of a document: its value and when it was last written
// (Unix milliseconds, set by the writer).
type Field struct {
	V  json.RawMessage `json:"v"`
	TS int64           `json:"ts"`
}

// Document is the value format: a JSON object of fields, e.g.
//
//	{"name": {"v": "Alice", "ts": 1700000000000}, "age": {"v": 31, "ts": 1700000005000}}
//
// A deleted field is kept as a tombstone {"v": null, "ts": …} so the
// deletion wins over older writes from the other side.
type Document map[string]Field

// Merge keeps, for every field, the side with the larger ts (the merging
// side on ties, as the built-in policies do). A field present on one side
// only is kept. The merged entry takes the merging entry's metadata with
// version = max + 1 and the latest update and access times. A value that is
// not such a document is refused (sdk.Fail): the host keeps the existing
// entry and parks the merging one for an operator.
func Merge(_ string, merging, existing *sdk.EntryView) sdk.Result {
	var m Document
	if err := json.Unmarshal(merging.Value, &m); err != nil {
		return sdk.Fail(fmt.Sprintf("jsonmerge: merging value of key %q is not a document: %v", merging.Key, err))
	}
	if existing == nil {
		return sdk.TakeMerging()
	}
	var e Document
	if err := json.Unmarshal(existing.Value, &e); err != nil {
		return sdk.Fail(fmt.Sprintf("jsonmerge: existing value of key %q is not a document: %v", existing.Key, err))
	}
	out := make(Document, len(m)+len(e))
	for k, f := range e {
		out[k] = f
	}
	for k, f := range m {
		if old, ok := out[k]; !ok || f.TS >= old.TS {
			out[k] = f
		}
	}
	value, err := json.Marshal(out) // map keys sorted: every node writes the same bytes
	if err != nil {
		return sdk.Fail("jsonmerge: encode merged document: " + err.Error())
	}
	r := *merging
	r.Value = value
	r.Cost = int64(len(r.Key) + len(value))
	r.Version = max(merging.Version, existing.Version) + 1
	r.LastUpdateTime = max(merging.LastUpdateTime, existing.LastUpdateTime)
	r.LastAccessTime = max(merging.LastAccessTime, existing.LastAccessTime)
	r.CreationTime = min(merging.CreationTime, existing.CreationTime)
	return sdk.Put(&r)
}
