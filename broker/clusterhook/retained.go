package clusterhook

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/mochix"
	"github.com/mendmq/mendmq/cluster/replica"
	"github.com/mendmq/mendmq/plugins"
)

// RetainedHook replicates the retained messages local clients (and wills)
// set or clear, and applies the cluster's resolved retained messages.
//
// Retained values in the replicated table are an 8-byte big-endian
// creation time (Unix seconds, for message expiry) followed by the v5
// PUBLISH packet.
type RetainedHook struct {
	mqtt.HookBase
	sh *shared
}

var _ mqtt.Hook = (*RetainedHook)(nil)

// ID names the hook.
func (r *RetainedHook) ID() string { return "mendmq-cluster-retained" }

// Provides declares the handled hook methods.
func (r *RetainedHook) Provides(b byte) bool { return b == mqtt.OnRetainMessage }

// OnRetainMessage replicates a retained message set or cleared by a local
// client (or will).
func (r *RetainedHook) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, n int64) {
	c := r.sh.cluster()
	if c == nil || cl.Net.Inline {
		return
	}
	now := time.Now()
	if len(pk.Payload) == 0 {
		c.DeleteRetained(pk.TopicName, now)
		return
	}
	v, err := encodeRetained(pk)
	if err != nil {
		r.sh.log.Error("encode retained", "topic", pk.TopicName, "error", err)
		return
	}
	c.PutRetained(pk.TopicName, v, now)
}

// ApplyRetained implements cluster.Broker: the resolved retained value of
// topic changed (nil: deleted). The cluster serializes calls.
func (r *RetainedHook) ApplyRetained(topic string, value []byte) {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}, TopicName: topic}
	if value != nil {
		var err error
		if pk, err = DecodeRetained(value); err != nil {
			r.sh.log.Error("replicated retained value unreadable; keeping the local one", "topic", topic, "error", err)
			return
		}
		pk.FixedHeader.Retain = true
		if exp := int64(pk.Properties.MessageExpiryInterval); exp > 0 {
			if m := mochix.MaxMessageExpiry(r.sh.srv); m > 0 && exp > m {
				exp = m
			}
			pk.Expiry = pk.Created + exp
			if pk.Expiry <= time.Now().Unix() {
				pk.Payload = nil // already expired: delete
			}
		}
	}
	mochix.SetRetained(r.sh.srv, pk)
}

func encodeRetained(pk packets.Packet) ([]byte, error) {
	b, err := EncodePublish(pk)
	if err != nil {
		return nil, err
	}
	created := pk.Created
	if created == 0 {
		created = time.Now().Unix()
	}
	out := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(b)), uint64(created))
	return append(out, b...), nil
}

// DecodeRetained splits a replicated retained value.
func DecodeRetained(v []byte) (packets.Packet, error) {
	if len(v) < 8 {
		return packets.Packet{}, errors.New("clusterhook: retained value shorter than its header")
	}
	pk, err := DecodePublish(v[8:])
	if err != nil {
		return pk, err
	}
	pk.Created = int64(binary.BigEndian.Uint64(v[:8]))
	return pk, nil
}

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
