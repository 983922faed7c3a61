package broker

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/mendmq/mendmq/broker/admin"
	"github.com/mendmq/mendmq/cluster/partition"
	"github.com/mendmq/mendmq/cluster/pmap"
)

// The partitioned maps over HTTP:
//
//	GET    /api/v1/maps                 every member's share of every map
//	GET    /api/v1/maps/{map}           one map: entries and partitions per member
//	GET    /api/v1/maps/{map}/{key...}  an entry with its EntryView (404 if absent)
//	PUT    /api/v1/maps/{map}/{key...}  {"value": "text"} | {"value_b64": "…"}, optional "ttl": "30s"
//	DELETE /api/v1/maps/{map}/{key...}

// mapOpTimeout bounds one map operation (owner moving, a merge under way).
const mapOpTimeout = 10 * time.Second

func (b *Broker) mountMaps() {
	b.admin.Handle("GET /api/v1/maps", http.HandlerFunc(b.apiMaps))
	b.admin.Handle("GET /api/v1/maps/{map}", http.HandlerFunc(b.apiMap))
	b.admin.Handle("GET /api/v1/maps/{map}/{key...}", http.HandlerFunc(b.apiMapGet))
	b.admin.Handle("PUT /api/v1/maps/{map}/{key...}", http.HandlerFunc(b.apiMapPut))
	b.admin.Handle("DELETE /api/v1/maps/{map}/{key...}", http.HandlerFunc(b.apiMapDelete))
}

// MapEntry is an entry as the API shows it: the value as text when it is
// UTF-8, else base64, with its EntryView metadata (Unix ms).
type MapEntry struct {
	Map            string `json:"map"`
	Key            string `json:"key"`
	Value          string `json:"value,omitempty"`
	ValueB64       string `json:"value_b64,omitempty"`
	Cost           int64  `json:"cost"`
	Hits           int64  `json:"hits"`
	Version        int64  `json:"version"`
	CreationTime   int64  `json:"creation_time"`
	LastAccessTime int64  `json:"last_access_time"`
	LastUpdateTime int64  `json:"last_update_time"`
	LastStoredTime int64  `json:"last_stored_time"`
	ExpirationTime int64  `json:"expiration_time"`
	Partition      int    `json:"partition"`
	Owner          string `json:"owner"`
}

func (b *Broker) mapEntry(name, key string, e pmap.Entry) MapEntry {
	v := e.View(key)
	me := MapEntry{Map: name, Key: key, Cost: v.Cost, Hits: v.Hits, Version: v.Version, CreationTime: v.CreationTime,
		LastAccessTime: v.LastAccessTime, LastUpdateTime: v.LastUpdateTime, LastStoredTime: v.LastStoredTime,
		ExpirationTime: v.ExpirationTime}
	if utf8.Valid(e.Value) {
		me.Value = string(e.Value)
	} else {
		me.ValueB64 = base64.StdEncoding.EncodeToString(e.Value)
	}
	t := b.node.Maps().Table()
	p := partition.Of([]byte(key), len(t.Replicas))
	me.Partition, me.Owner = int(p), t.Owner(p)
	return me
}

// mapTarget validates the path's map and key; it writes the 4xx and
// returns false when they are bad or there are no maps.
func (b *Broker) mapTarget(w http.ResponseWriter, r *http.Request, withKey bool) (string, string, bool) {
	if b.node == nil {
		admin.WriteError(w, http.StatusConflict, fmt.Errorf("maps need the cluster: %w", errNoCluster))
		return "", "", false
	}
	name, key := r.PathValue("map"), r.PathValue("key")
	err := pmap.ValidName(name)
	if err == nil && withKey {
		err = pmap.ValidKey(key)
	}
	if err != nil {
		admin.WriteError(w, http.StatusBadRequest, err)
		return "", "", false
	}
	return name, key, true
}

// mapError answers a failed operation: 503 when the cluster cannot serve
// it now (split-brain protection, an owner moving), 400 for bad input.
func mapError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, pmap.ErrInvalid):
		admin.WriteError(w, http.StatusBadRequest, err)
	case errors.Is(err, pmap.ErrRefused), errors.Is(err, pmap.ErrUnavailable):
		admin.WriteError(w, http.StatusServiceUnavailable, err)
	default:
		admin.WriteError(w, http.StatusInternalServerError, err)
	}
}

func (b *Broker) apiMapGet(w http.ResponseWriter, r *http.Request) {
	name, key, ok := b.mapTarget(w, r, true)
	if !ok {
		return
	}
	if _, ok := admin.Query(w, r); !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), mapOpTimeout)
	defer cancel()
	e, found, err := b.node.Maps().Get(ctx, name, key)
	if err != nil {
		mapError(w, err)
		return
	}
	if !found {
		admin.WriteError(w, http.StatusNotFound, fmt.Errorf("map %s has no key %q", name, key))
		return
	}
	admin.WriteJSON(w, http.StatusOK, b.mapEntry(name, key, e))
}

func (b *Broker) apiMapPut(w http.ResponseWriter, r *http.Request) {
	name, key, ok := b.mapTarget(w, r, true)
	if !ok {
		return
	}
	var req struct {
		Value    *string `json:"value"`
		ValueB64 *string `json:"value_b64"`
		TTL      string  `json:"ttl"`
	}
	if !admin.DecodeJSON(w, r, &req) {
		return
	}
	var value []byte
	switch {
	case req.Value != nil && req.ValueB64 != nil:
		admin.WriteError(w, http.StatusBadRequest, errors.New(`give "value" or "value_b64", not both`))
		return
	case req.Value != nil:
		value = []byte(*req.Value)
	case req.ValueB64 != nil:
		v, err := base64.StdEncoding.DecodeString(*req.ValueB64)
		if err != nil {
			admin.WriteError(w, http.StatusBadRequest, fmt.Errorf("value_b64: %v", err))
			return
		}
		value = v
	default:
		admin.WriteError(w, http.StatusBadRequest, errors.New(`body must be {"value": "text"} or {"value_b64": "…"}, with an optional "ttl": "30s"`))
		return
	}
	var ttl time.Duration
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 {
			admin.WriteError(w, http.StatusBadRequest, fmt.Errorf("ttl %q: want a positive duration like 30s", req.TTL))
			return
		}
		ttl = d
	}
	ctx, cancel := context.WithTimeout(r.Context(), mapOpTimeout)
	defer cancel()
	e, err := b.node.Maps().Put(ctx, name, key, value, ttl)
	if err != nil {
		mapError(w, err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, b.mapEntry(name, key, e))
}

func (b *Broker) apiMapDelete(w http.ResponseWriter, r *http.Request) {
	name, key, ok := b.mapTarget(w, r, true)
	if !ok || !admin.NoBody(w, r) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), mapOpTimeout)
	defer cancel()
	found, err := b.node.Maps().Delete(ctx, name, key)
	if err != nil {
		mapError(w, err)
		return
	}
	if !found {
		admin.WriteError(w, http.StatusNotFound, fmt.Errorf("map %s has no key %q", name, key))
		return
	}
	admin.WriteJSON(w, http.StatusOK, map[string]any{"ok": true})
}

// MapsOverview is every member's share of the maps.
type MapsOverview struct {
	Partitions int                         `json:"partitions"`
	Members    map[string]pmap.MemberStats `json:"members"`
	// Unreachable lists members that did not answer, with why.
	Unreachable map[string]string `json:"unreachable,omitempty"`
	// Maps lists the map names that hold entries.
	Maps []string `json:"maps"`
}

func (b *Broker) mapsOverview(ctx context.Context) MapsOverview {
	st, errs := b.node.Maps().ClusterStats(ctx)
	o := MapsOverview{Partitions: len(b.node.Maps().Table().Replicas), Members: st, Unreachable: errs}
	for _, m := range st {
		for name := range m.Maps {
			if !slices.Contains(o.Maps, name) {
				o.Maps = append(o.Maps, name)
			}
		}
	}
	slices.Sort(o.Maps)
	return o
}

func (b *Broker) apiMaps(w http.ResponseWriter, r *http.Request) {
	if b.node == nil {
		admin.WriteError(w, http.StatusConflict, fmt.Errorf("maps need the cluster: %w", errNoCluster))
		return
	}
	if _, ok := admin.Query(w, r); !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	admin.WriteJSON(w, http.StatusOK, b.mapsOverview(ctx))
}

// MapOverview is one map across the cluster.
type MapOverview struct {
	Map string `json:"map"`
	// Entries and Bytes sum the owners' shares.
	Entries int64 `json:"entries"`
	Bytes   int64 `json:"bytes"`
	// Members holds each member's entries, backup copies and partitions.
	Members     map[string]MapMemberOverview `json:"members"`
	Unreachable map[string]string            `json:"unreachable,omitempty"`
	// Config is the map's settings (maps.<name> over maps.default).
	Config map[string]any `json:"config"`
}

// MapMemberOverview is one member's share of one map.
type MapMemberOverview struct {
	pmap.MapStats
	PartitionsOwned int `json:"partitions_owned"`
	Migrating       int `json:"migrating"`
	// StoreDirty counts the member's entries (of every map) waiting
	// for its MapStore.
	StoreDirty int `json:"store_dirty"`
}

func (b *Broker) apiMap(w http.ResponseWriter, r *http.Request) {
	name, _, ok := b.mapTarget(w, r, false)
	if !ok {
		return
	}
	if _, ok := admin.Query(w, r); !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	all := b.mapsOverview(ctx)
	pc := b.policies.Config()
	s := pc.Settings(name)
	o := MapOverview{Map: name, Members: map[string]MapMemberOverview{}, Unreachable: all.Unreachable, Config: map[string]any{
		"merge_policy": s.MergePolicy, "backup_count": *s.BackupCount, "async_backups": *s.AsyncBackups,
		"min_cluster_size": *s.MinClusterSize, "read_quorum": *s.ReadQuorum, "read_from_backup": *s.ReadFromBackup,
		"ttl": s.TTL.String(), "max_idle": s.MaxIdle.String()}}
	for member, st := range all.Members {
		ms := st.Maps[name]
		o.Entries += ms.Entries
		o.Bytes += ms.Bytes
		o.Members[member] = MapMemberOverview{MapStats: ms, PartitionsOwned: st.Owned, Migrating: st.Migrating, StoreDirty: st.StoreDirty}
	}
	admin.WriteJSON(w, http.StatusOK, o)
}
