package plugins

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/mendmq/mendmq/plugins/internal/wasmhost"
)

// Reading the MapStore from a policy (sdk/ABI.md §9): a module that imports
// mendmq.stored_entry_v1 may ask, during a merge, for the copy of a key it
// merges that the map's MapStore holds on this node. The Registry answers
// through a StoreReader the MapStore's owner injects (the broker, over the
// cluster's maps); plugins imports neither of them.

// ErrNoMapStore is returned by a StoreReader when this node keeps no
// MapStore at all (no storage file): the policy is told "no store".
var ErrNoMapStore = errors.New("plugins: no map store on this node")

// StoreReader reads the MapStore: the entries that maps with
// maps.<name>.map_store keep in this node's storage.
//
// StoredEntry returns the copy of key stored for map mapName and true;
// false when the store holds no such key; ErrNoMapStore when this node has
// no store; any other error when the store could not be read (the policy
// is told so and may fail the merge, which parks the entry). The Registry
// asks only for maps whose map_store mode is set in its running
// configuration, only for a key the policy's current merge call merges,
// and never for "$retained" or "$smoke".
//
// Calling contract: it is called on the goroutine of a merge, inside the
// policy's call, concurrently for different merges. ctx ends when that
// call is stopped (plugins.call_timeout passed, or the merge's caller gave
// up); a guest cannot be stopped while StoredEntry runs, so a slow read
// should return then. It must not block on map operations or merges, nor
// keep key. The returned entry may alias the store's bytes only until the
// call returns (the Registry copies it at once).
type StoreReader interface {
	StoredEntry(ctx context.Context, mapName string, key []byte) (EntryView, bool, error)
}

// storeHolder boxes a StoreReader for an atomic pointer.
type storeHolder struct{ r StoreReader }

// SetStoreReader gives policies read access to the MapStore through r
// (nil: none, every policy is told "no store"). It can be called at any
// time; merges already running may still use the previous reader.
func (r *Registry) SetStoreReader(s StoreReader) {
	if s == nil {
		r.store.Store(nil)
		return
	}
	r.store.Store(&storeHolder{s})
}

// storedEntry is the wasmhost.StoreLookup of every policy of r.
func (r *Registry) storedEntry(ctx context.Context, mapName string, key []byte) (EntryView, bool, error) {
	if strings.HasPrefix(mapName, "$") || !r.mapStored(mapName) { // $retained, $smoke: no map, no store
		return EntryView{}, false, wasmhost.ErrNoStore
	}
	h := r.store.Load()
	if h == nil {
		return EntryView{}, false, wasmhost.ErrNoStore
	}
	e, found, err := h.r.StoredEntry(ctx, mapName, key)
	switch {
	case errors.Is(err, ErrNoMapStore):
		return EntryView{}, false, wasmhost.ErrNoStore
	case err != nil:
		r.logger.Warn("a policy could not read the map store; it may park the entry",
			"map", mapName, "key", string(clip(key)), "err", err)
		return EntryView{}, false, fmt.Errorf("read map %s key %q from the map store: %w", mapName, clip(key), err)
	}
	return e, found, nil
}

// mapStored reports whether map mapName has a map_store mode in the
// running configuration (without a lock: the set pins its own copy).
func (r *Registry) mapStored(mapName string) bool {
	s := r.cur.Load()
	if s == nil {
		return false
	}
	def, own := s.cfg.Maps[DefaultMap], s.cfg.Maps[mapName]
	mode := own.MapStore
	if mode == nil {
		mode = def.MapStore
	}
	return mode != nil && *mode != ""
}
