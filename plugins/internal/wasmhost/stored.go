package wasmhost

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"

	"github.com/mendmq/mendmq/plugins/internal/abi"
)

// The stored-entry import (sdk/ABI.md §9): a policy may read the MapStore
// copy of a key it is merging, through the host function
// mendmq.stored_entry_v1. Only modules that import it get it (the host
// module is linked into their runtime alone), and only during a merge or
// merge_batch call, only for a key that call merges, only for the call's
// map, at most MaxStoredEntry bytes; the lookup itself is the Options.Stored
// function the registry passes in.

// Names of the import.
const (
	HostModule        = "mendmq"
	ImportStoredEntry = "stored_entry_v1"
)

// Negative results of stored_entry_v1 (a size is ≥ abi.EntryHeaderSize).
const (
	StoredNotFound   int32 = -1 // the map's store has no entry under the key
	StoredNoStore    int32 = -2 // the map keeps no store here
	StoredDenied     int32 = -3 // not during a merge call, or not a key it merges
	StoredTooLarge   int32 = -4 // the encoded entry exceeds MaxStoredEntry
	StoredError      int32 = -5 // the lookup failed
	StoredBadPointer int32 = -6 // key or buffer outside guest memory
)

// MaxStoredEntry bounds one encoded stored entry handed to a guest: room
// for the largest map entry (a 4 KiB key, an 8 MiB value) with margin,
// and far below a module's memory limit.
const MaxStoredEntry = 16 << 20

// ErrNoStore is what a StoreLookup returns (wrapped or not) when the map
// keeps no store: the guest gets StoredNoStore.
var ErrNoStore = errors.New("no map store")

// StoreLookup reads the stored copy of key in map mapName: the entry and
// true, false when the store has no such key, ErrNoStore when the map has
// no store, another error when the store failed. It runs on the goroutine
// of the merge call, inside it; ctx ends when the call is stopped (its
// deadline passed or its caller gave up), and a slow lookup should return
// then: the guest cannot be stopped while the host function runs. It must
// not retain key.
type StoreLookup func(ctx context.Context, mapName string, key []byte) (abi.EntryView, bool, error)

// callState is what the host function may see of the running merge call.
type callState struct {
	mapName string
	// keys are the call's merging keys. Only they are kept, not the items:
	// keeping the caller's items slice would move it to the heap for every
	// module (escape analysis does not see the usesStored test), one
	// allocation per Registry.Merge.
	keys  [][]byte
	next  int  // where the search for the asked key starts
	valid bool // a merge call runs
	// The last answer, kept for the rest of the call so that a guest
	// asking again with a larger buffer gets the same entry.
	have       bool
	lastKey    []byte
	lastStatus int32  // 0 when lastEnc holds an entry
	lastEnc    []byte // encoded entry
}

// instanceKey finds the Instance behind a guest call's context.
type instanceKey struct{}

// importsStored reports whether c imports the stored-entry function, and
// checks its signature.
func importsStored(c wazero.CompiledModule) (bool, error) {
	found := false
	for _, f := range c.ImportedFunctions() {
		mod, name, _ := f.Import()
		if mod != HostModule {
			continue
		}
		if name != ImportStoredEntry {
			return false, fmt.Errorf("module imports %s.%s: the host provides %s.%s only (sdk/ABI.md §9)",
				mod, name, HostModule, ImportStoredEntry)
		}
		want := []api.ValueType{api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI32}
		if !slices.Equal(f.ParamTypes(), want) || !slices.Equal(f.ResultTypes(), []api.ValueType{api.ValueTypeI32}) {
			return false, fmt.Errorf("module imports %s.%s as %s, want %s", mod, name,
				signature(f.ParamTypes(), f.ResultTypes()), signature(want, []api.ValueType{api.ValueTypeI32}))
		}
		found = true
	}
	return found, nil
}

// linkStored instantiates the host module in rt.
func linkStored(ctx context.Context, rt wazero.Runtime) error {
	_, err := rt.NewHostModuleBuilder(HostModule).
		NewFunctionBuilder().
		WithGoModuleFunction(api.GoModuleFunc(storedEntry),
			[]api.ValueType{api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI32},
			[]api.ValueType{api.ValueTypeI32}).
		WithParameterNames("key_ptr", "key_len", "buf_ptr", "buf_cap").
		Export(ImportStoredEntry).
		Instantiate(ctx)
	if err != nil {
		return fmt.Errorf("link %s.%s: %w", HostModule, ImportStoredEntry, err)
	}
	return nil
}

// storedEntry is mendmq.stored_entry_v1(key_ptr, key_len, buf_ptr,
// buf_cap) -> i32. It never panics: every guest mistake is a status.
func storedEntry(ctx context.Context, mod api.Module, stack []uint64) {
	in, _ := ctx.Value(instanceKey{}).(*Instance)
	if in == nil {
		// _initialize and mendmq_abi_version run under another context.
		stack[0] = api.EncodeI32(StoredDenied)
		return
	}
	stack[0] = api.EncodeI32(in.storedEntry(mod.Memory(), api.DecodeU32(stack[0]), api.DecodeU32(stack[1]),
		api.DecodeU32(stack[2]), api.DecodeU32(stack[3])))
}

// storedEntry answers one stored_entry_v1 call of in's guest.
func (in *Instance) storedEntry(mem api.Memory, keyPtr, keyLen, bufPtr, bufCap uint32) int32 {
	c := &in.state
	if !c.valid {
		return StoredDenied // mendmq_alloc, or between calls
	}
	key, ok := mem.Read(keyPtr, keyLen)
	if !ok {
		return StoredBadPointer
	}
	if !c.merges(key) {
		return StoredDenied
	}
	if !c.have || !bytes.Equal(c.lastKey, key) {
		c.lookup(in.ctx, in.stored, key)
	}
	if c.lastStatus != 0 {
		return c.lastStatus
	}
	n := uint32(len(c.lastEnc))
	if n <= bufCap && !mem.Write(bufPtr, c.lastEnc) {
		return StoredBadPointer
	}
	return int32(n)
}

// merges reports whether key is the merging key of an item of the call.
// Guests ask in item order, so the search starts after the last match.
func (c *callState) merges(key []byte) bool {
	n := len(c.keys)
	for i := range n {
		j := (c.next + i) % n
		if bytes.Equal(c.keys[j], key) {
			c.next = j
			return true
		}
	}
	return false
}

// lookup reads key's stored entry and keeps the answer as the call's last.
func (c *callState) lookup(ctx context.Context, fn StoreLookup, key []byte) {
	c.have = true
	c.lastKey = append(c.lastKey[:0], key...)
	c.lastEnc = c.lastEnc[:0]
	if fn == nil {
		c.lastStatus = StoredNoStore
		return
	}
	e, found, err := fn(ctx, c.mapName, key)
	switch {
	case errors.Is(err, ErrNoStore):
		c.lastStatus = StoredNoStore
	case err != nil:
		c.lastStatus = StoredError
	case !found:
		c.lastStatus = StoredNotFound
	default:
		// The entry as the guest gets it: the key asked for, whatever the
		// lookup returned in Key.
		view := e
		view.Key = c.lastKey
		if abi.EntrySize(&view) > MaxStoredEntry {
			c.lastStatus = StoredTooLarge
			return
		}
		c.lastEnc = abi.AppendEntry(c.lastEnc, &view)
		c.lastStatus = 0
	}
}

// beginStored opens the call's state for the host function.
func (in *Instance) beginStored(mapName string, items []abi.Item) {
	c := &in.state
	c.keys = c.keys[:0]
	for i := range items {
		c.keys = append(c.keys, items[i].Merging.Key)
	}
	c.mapName, c.next, c.valid, c.have = mapName, 0, true, false
}

// endStored closes it: the host function answers StoredDenied until the
// next call, and nothing of the caller's stays reachable.
func (in *Instance) endStored() {
	c := &in.state
	clear(c.keys) // keep nothing of the caller's
	c.keys, c.valid, c.have = c.keys[:0], false, false
	if cap(c.lastEnc) > 64<<10 {
		c.lastEnc = nil // do not keep a large entry's buffer per instance
	}
}
