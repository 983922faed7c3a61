package broker

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/cluster/durable"
	"github.com/mendmq/mendmq/cluster/merge"
	"github.com/mendmq/mendmq/plugins"
)

// conflictStore keeps the parked conflicts in the cluster's storage file
// (plugins.ConflictStore): one JSON record per conflict under its id (8
// bytes, big endian), and the next id under the 4-byte key "next".
type conflictStore struct {
	kv  *durable.KV
	log *slog.Logger
}

var keyNextConflict = []byte("next")

func conflictKey(id uint64) []byte { return binary.BigEndian.AppendUint64(nil, id) }

func (s conflictStore) SaveConflicts(cs []plugins.Conflict, next uint64) error {
	pairs := make([]durable.KVPair, 0, len(cs)+1)
	for _, c := range cs {
		b, err := json.Marshal(c)
		if err != nil {
			return fmt.Errorf("encode conflict %d: %w", c.ID, err)
		}
		pairs = append(pairs, durable.KVPair{Key: conflictKey(c.ID), Value: b})
	}
	pairs = append(pairs, durable.KVPair{Key: keyNextConflict, Value: binary.BigEndian.AppendUint64(nil, next)})
	return s.kv.Write(pairs)
}

func (s conflictStore) DeleteConflict(id uint64) error {
	return s.kv.Write([]durable.KVPair{{Key: conflictKey(id)}})
}

// LoadConflicts returns the stored conflicts; a record that does not
// decode is logged and left in the file (the others are loaded: one bad
// record must not keep the node down, nor be deleted unseen).
func (s conflictStore) LoadConflicts() ([]plugins.Conflict, uint64, error) {
	var out []plugins.Conflict
	var next uint64
	err := s.kv.ForEach(func(k, v []byte) error {
		switch len(k) {
		case len(keyNextConflict):
			if len(v) == 8 {
				next = binary.BigEndian.Uint64(v)
			}
		case 8:
			var c plugins.Conflict
			if err := json.Unmarshal(v, &c); err != nil || c.ID != binary.BigEndian.Uint64(k) {
				s.log.Error("parked conflict unreadable in the cluster storage; left there, not loaded",
					"id", binary.BigEndian.Uint64(k), "error", err)
				return nil
			}
			out = append(out, c)
		}
		return nil
	})
	return out, next, err
}

// Conflict resolutions: POST /api/v1/policies/conflicts/[{node}/]{id}
// with {"action": ...}.
const (
	// ResolveTakeMerging writes the merging entry over the existing one.
	ResolveTakeMerging = "take_merging"
	// ResolveKeepExisting keeps the existing entry (drops the conflict).
	ResolveKeepExisting = "keep_existing"
	// ResolveRerun runs the merging entry through the map's current
	// policy against the entry there now.
	ResolveRerun = "rerun"
)

// ConflictResolution is the answer of POST
// /api/v1/policies/conflicts/[{node}/]{id}.
type ConflictResolution struct {
	// Node held the conflict and resolved it.
	Node   string `json:"node"`
	ID     uint64 `json:"id"`
	Map    string `json:"map"`
	Key    string `json:"key"`
	Action string `json:"action"`
	// Outcome: for take_merging "written"; keep_existing "kept"; rerun the
	// policy's verdict on this node for retained messages, or "merged at
	// the owner" for a map (a policy that fails again parks the entry
	// anew, on the key's owner).
	Outcome string `json:"outcome"`
}

// validAction checks a resolution's action.
func validAction(action string) error {
	switch action {
	case ResolveTakeMerging, ResolveKeepExisting, ResolveRerun:
		return nil
	}
	return fmt.Errorf("action %q: use %s, %s or %s", action, ResolveTakeMerging, ResolveKeepExisting, ResolveRerun)
}

// resolveConflict resolves this node's parked conflict id with action
// (checked by validAction), for by (who asked: the admin API's client, or
// a peer on an operator's behalf). The conflict is removed only once its
// resolution is written, so a failure loses nothing. On failure it
// returns the HTTP status that says why.
func (b *Broker) resolveConflict(ctx context.Context, id uint64, action, by string) (ConflictResolution, int, error) {
	c, ok := b.policies.Conflict(id)
	if !ok {
		return ConflictResolution{}, http.StatusNotFound, fmt.Errorf("%w: %d on node %s", plugins.ErrNoConflict, id, b.cfg.Node.Name)
	}
	res := ConflictResolution{Node: b.cfg.Node.Name, ID: id, Map: c.Map, Key: string(c.Merging.Key), Action: action}
	if action == ResolveKeepExisting {
		if err := b.policies.DropConflict(id); err != nil {
			return ConflictResolution{}, http.StatusInternalServerError, err
		}
		res.Outcome = "kept"
		b.log.Info("parked conflict resolved", "id", id, "map", c.Map, "key", res.Key, "action", action, "by", by)
		return res, http.StatusOK, nil
	}
	if b.node == nil {
		return ConflictResolution{}, http.StatusConflict, errNoCluster
	}
	err := b.policies.ResolveConflict(id, func(c plugins.Conflict) error {
		var err error
		res.Outcome, err = b.resolve(ctx, c, action)
		return err
	})
	switch {
	case errors.Is(err, plugins.ErrNoConflict):
		return ConflictResolution{}, http.StatusNotFound, err
	case err != nil:
		return ConflictResolution{}, http.StatusServiceUnavailable, err
	}
	b.log.Info("parked conflict resolved", "id", id, "map", c.Map, "key", res.Key, "action", action, "outcome", res.Outcome, "by", by)
	return res, http.StatusOK, nil
}

// dropConflict discards this node's parked conflict id for by.
func (b *Broker) dropConflict(id uint64, by string) (int, error) {
	c, ok := b.policies.Conflict(id)
	if err := b.policies.DropConflict(id); err != nil {
		if errors.Is(err, plugins.ErrNoConflict) {
			return http.StatusNotFound, fmt.Errorf("%w on node %s", err, b.cfg.Node.Name)
		}
		return http.StatusInternalServerError, err
	}
	if ok {
		b.log.Info("parked conflict dropped", "id", id, "map", c.Map, "key", string(c.Merging.Key), "by", by)
	}
	return http.StatusOK, nil
}

// resolve applies action (take_merging or rerun) to conflict c.
func (b *Broker) resolve(ctx context.Context, c plugins.Conflict, action string) (string, error) {
	key := string(c.Merging.Key)
	if c.Map != plugins.RetainedMap {
		if action == ResolveRerun {
			if err := b.node.Maps().Merge(ctx, c.Map, c.Merging); err != nil {
				return "", err
			}
			return "merged at the owner", nil
		}
		var ttl time.Duration
		if exp := c.Merging.ExpirationTime; exp > 0 {
			ttl = time.Until(time.UnixMilli(exp))
			if ttl <= 0 {
				return "", fmt.Errorf("the merging entry of map %s key %q expired at %s: keep the existing one or drop the conflict", c.Map, key, time.UnixMilli(exp).UTC().Format(time.RFC3339))
			}
		}
		if _, err := b.node.Maps().Put(ctx, c.Map, key, c.Merging.Value, ttl); err != nil {
			return "", err
		}
		return "written", nil
	}
	now := time.Now()
	if action == ResolveTakeMerging {
		b.node.PutRetained(key, retainedOf(&c.Merging), now)
		return "written", nil
	}
	var existing *merge.EntryView
	if m, ok := b.node.Retained(key); ok {
		existing = &merge.EntryView{Key: c.Merging.Key, Value: m.Publish, Cost: int64(len(m.Publish)), Version: m.Version,
			CreationTime: m.Created.UnixMilli(), ExpirationTime: unixMilliOrZero(m.Expires)}
	}
	r, err := b.policies.Merge(ctx, plugins.RetainedMap, &c.Merging, existing)
	switch {
	case r.ConflictID != 0:
		return fmt.Sprintf("parked again as conflict %d", r.ConflictID), nil
	case err != nil:
		return "", err
	}
	switch r.Verdict {
	case merge.TakeMerging:
		b.node.PutRetained(key, retainedOf(&c.Merging), now)
	case merge.Put:
		b.node.PutRetained(key, retainedOf(r.Entry), now)
	case merge.Delete:
		b.node.DeleteRetained(key, now)
	}
	return r.Verdict.String(), nil
}

// retainedOf is the retained message of a $retained entry view (its value
// is the PUBLISH packet, see cluster/retained.View).
func retainedOf(v *merge.EntryView) cluster.RetainedMessage {
	m := cluster.RetainedMessage{Publish: v.Value, Created: time.UnixMilli(v.CreationTime)}
	if v.ExpirationTime > 0 {
		m.Expires = time.UnixMilli(v.ExpirationTime)
	}
	return m
}

func unixMilliOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}
