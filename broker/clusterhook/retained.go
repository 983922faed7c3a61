package clusterhook

import (
	"context"
	"log/slog"
	"time"

	"github.com/mendmq/mendmq/cluster/replica"
	"github.com/mendmq/mendmq/plugins"
)

// RetainedResolver decides between concurrent retained messages of one
// topic with the `$retained` merge policy (retained.merge_policy), the
// same WASM contract as map entries (DESIGN §5).
//
// The policy sees two EntryViews: key = topic, value = the replicated
// retained value (8-byte big-endian creation time in Unix seconds, then the
// MQTT v5 PUBLISH packet), cost = value size, creation_time = the message's
// creation, last_update_time = last_stored_time = the write time on its
// node, expiration_time = creation + message expiry interval (0 = never).
// Hits, access time and version are not tracked for retained messages
// (0). A deletion (empty retained payload) is not an entry a policy can
// judge, so a deletion concurrent with a set is decided by latest write
// (ties to the larger node id). A policy that fails keeps the existing
// message; the merging one is parked for operators (plugins conflicts).
func RetainedResolver(reg *plugins.Registry, log *slog.Logger) replica.Resolver {
	return replica.ResolverFunc(func(table, topic string, existing, merging replica.Sibling) replica.Sibling {
		if !existing.Live() || !merging.Live() {
			return replica.LatestWins.Resolve(table, topic, existing, merging)
		}
		ev, mv := retainedView(topic, existing), retainedView(topic, merging)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		res, err := reg.Merge(ctx, plugins.RetainedMap, &mv, &ev)
		if err != nil {
			log.Error("$retained merge failed; keeping the existing message", "topic", topic, "error", err)
			return existing
		}
		switch res.Verdict {
		case plugins.TakeMerging:
			return merging
		case plugins.Delete:
			return replica.Sibling{Node: merging.Node, TS: max(existing.TS, merging.TS), Deleted: true}
		case plugins.Put:
			if res.Entry != nil {
				if _, err := DecodeRetained(res.Entry.Value); err != nil {
					log.Error("$retained policy built an unreadable message; keeping the existing one", "topic", topic, "error", err)
					return existing
				}
				return replica.Sibling{Node: merging.Node, TS: max(existing.TS, merging.TS), Value: res.Entry.Value}
			}
		}
		return existing
	})
}

func retainedView(topic string, s replica.Sibling) plugins.EntryView {
	v := plugins.EntryView{
		Key:            []byte(topic),
		Value:          s.Value,
		Cost:           int64(len(s.Value)),
		LastUpdateTime: s.TS,
		LastStoredTime: s.TS,
		CreationTime:   s.TS,
	}
	if pk, err := DecodeRetained(s.Value); err == nil {
		v.CreationTime = pk.Created * 1000
		if exp := pk.Properties.MessageExpiryInterval; exp > 0 {
			v.ExpirationTime = (pk.Created + int64(exp)) * 1000
		}
	}
	return v
}
