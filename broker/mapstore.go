package broker

import (
	"context"
	"errors"

	"github.com/mendmq/mendmq/cluster/pmap"
	"github.com/mendmq/mendmq/plugins"
)

// mapStoreReader lets merge policies read the partitioned maps' MapStore
// (plugins.StoreReader over pmap.Maps.Stored; sdk/ABI.md §9). The registry
// asks only for maps whose map_store mode is set.
type mapStoreReader struct{ maps *pmap.Maps }

var _ plugins.StoreReader = mapStoreReader{}

// StoredEntry reads the storage file only (no lock, no map operation), so
// it never waits on the merge that calls it.
func (r mapStoreReader) StoredEntry(_ context.Context, name string, key []byte) (plugins.EntryView, bool, error) {
	e, ok, err := r.maps.Stored(name, string(key))
	switch {
	case errors.Is(err, pmap.ErrNoStore):
		return plugins.EntryView{}, false, plugins.ErrNoMapStore
	case err != nil || !ok:
		return plugins.EntryView{}, false, err
	}
	return e.View(string(key)), true, nil
}
