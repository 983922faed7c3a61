package broker

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/admin"
	"github.com/mendmq/mendmq/broker/config"
	"github.com/mendmq/mendmq/broker/reserved"
)

// RetainedMessage is one retained message in GET /api/v1/retained.
type RetainedMessage struct {
	Topic string `json:"topic"`
	// Payload is the payload as text when it is valid UTF-8; otherwise
	// PayloadB64 holds it in standard base64.
	Payload    *string `json:"payload,omitempty"`
	PayloadB64 *string `json:"payload_b64,omitempty"`
	Bytes      int     `json:"bytes"`
	QoS        byte    `json:"qos"`
	// Origin is the client id that set it (on its node).
	Origin      string     `json:"origin,omitempty"`
	CreatedAt   *time.Time `json:"created_at,omitempty"`
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`
	ContentType string     `json:"content_type,omitempty"`
	// Hits counts the message's reads (deliveries to clients because they
	// subscribed), summed over the nodes whose counts this node has, and
	// LastReadAt is the time of the last one: the hits and last access
	// time a $retained merge policy sees. Clustered nodes only. Reads
	// through this API are not counted: looking must not change which
	// message wins a merge.
	Hits       *int64     `json:"hits,omitempty"`
	LastReadAt *time.Time `json:"last_read_at,omitempty"`
}

// RetainedList is the answer of GET /api/v1/retained.
type RetainedList struct {
	Node      string            `json:"node"`
	Messages  []RetainedMessage `json:"messages"`
	Truncated bool              `json:"truncated"`
}

func retainedMessage(pk packets.Packet) RetainedMessage {
	m := RetainedMessage{Topic: pk.TopicName, Bytes: len(pk.Payload), QoS: pk.FixedHeader.Qos, Origin: pk.Origin,
		ContentType: pk.Properties.ContentType}
	if utf8.Valid(pk.Payload) {
		s := string(pk.Payload)
		m.Payload = &s
	} else {
		s := base64.StdEncoding.EncodeToString(pk.Payload)
		m.PayloadB64 = &s
	}
	if pk.Created > 0 {
		t := time.Unix(pk.Created, 0).UTC()
		m.CreatedAt = &t
	}
	if pk.Expiry > 0 {
		t := time.Unix(pk.Expiry, 0).UTC()
		m.ExpiresAt = &t
	}
	return m
}

// apiRetained answers ?topic=T (the retained message of one topic, 404
// when there is none) or ?filter=F (those matching a filter, e.g. "a/#"),
// with ?limit=. Every node holds the cluster's retained messages, so the
// answer is the cluster's.
func (b *Broker) apiRetained(w http.ResponseWriter, r *http.Request) {
	q, ok := admin.Query(w, r, "topic", "filter", "limit")
	if !ok {
		return
	}
	limit, ok := admin.Limit(w, q["limit"], defaultListLimit, maxListLimit)
	if !ok {
		return
	}
	topic, hasTopic := q["topic"]
	filter, hasFilter := q["filter"]
	out := RetainedList{Node: b.cfg.Node.Name, Messages: []RetainedMessage{}}
	switch {
	case hasTopic == hasFilter:
		admin.WriteError(w, http.StatusBadRequest, errors.New("give one of topic=TOPIC or filter=FILTER (e.g. filter=%23 for all)"))
		return
	case hasTopic:
		if err := validTopic(topic); err != nil {
			admin.WriteError(w, http.StatusBadRequest, err)
			return
		}
		pk, ok := b.server.Topics.Retained.Get(topic)
		if !ok {
			admin.WriteError(w, http.StatusNotFound, fmt.Errorf("no retained message on %q", topic))
			return
		}
		out.Messages = append(out.Messages, b.withReads(retainedMessage(pk)))
	default:
		if err := config.ValidFilter(filter); err != nil {
			admin.WriteError(w, http.StatusBadRequest, err)
			return
		}
		pks := b.server.Topics.Messages(filter)
		sort.Slice(pks, func(i, j int) bool { return pks[i].TopicName < pks[j].TopicName })
		for _, pk := range pks {
			if len(out.Messages) == limit {
				out.Truncated = true
				break
			}
			out.Messages = append(out.Messages, b.withReads(retainedMessage(pk)))
		}
	}
	admin.WriteJSON(w, http.StatusOK, out)
}

// withReads adds the cluster's read counts of m (clustered nodes).
func (b *Broker) withReads(m RetainedMessage) RetainedMessage {
	if b.node == nil {
		return m
	}
	if hits, last, ok := b.node.RetainedReads(m.Topic); ok {
		m.Hits = &hits
		if !last.IsZero() {
			t := last.UTC()
			m.LastReadAt = &t
		}
	}
	return m
}

// validTopic checks a topic name given to the retained API.
func validTopic(topic string) error {
	switch {
	case topic == "":
		return errors.New("topic is empty")
	case strings.ContainsAny(topic, "+#"):
		return fmt.Errorf("topic %q: a topic name has no wildcards (list with filter= instead)", topic)
	case !utf8.ValidString(topic) || strings.ContainsRune(topic, 0):
		return fmt.Errorf("topic %q is not valid UTF-8 without NUL", topic)
	case len(topic) > 65535:
		return errors.New("topic longer than 65535 bytes")
	}
	return nil
}

// apiRetainedDelete clears the retained message of ?topic=T exactly as a
// client does: an empty retained PUBLISH (QoS 0) through mochi, from the
// reserved operator client. So mochi drops it, the storage hook deletes it
// from storage.path, the cluster hook replicates the deletion to every
// node (OnRetainMessage -> DeleteRetained) and, as the MQTT spec requires
// for such a publish, current subscribers of the topic receive the empty
// message.
func (b *Broker) apiRetainedDelete(w http.ResponseWriter, r *http.Request) {
	q, ok := admin.Query(w, r, "topic")
	if !ok {
		return
	}
	topic := q["topic"]
	if err := validTopic(topic); err != nil {
		admin.WriteError(w, http.StatusBadRequest, err)
		return
	}
	if reserved.ReservedTopic(topic) {
		admin.WriteError(w, http.StatusBadRequest, fmt.Errorf("topic %q: '$' topics are the broker's own", topic))
		return
	}
	if _, ok := b.server.Topics.Retained.Get(topic); !ok {
		admin.WriteError(w, http.StatusNotFound, fmt.Errorf("no retained message on %q", topic))
		return
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true},
		TopicName:   topic,
		Payload:     []byte{},
	}
	// One operator client: its publishes go through mochi one at a time.
	b.operatorMu.Lock()
	err := b.server.InjectPacket(b.reserved.Operator(), pk)
	b.operatorMu.Unlock()
	if err != nil {
		admin.WriteError(w, http.StatusInternalServerError, fmt.Errorf("clear retained %q: %w", topic, err))
		return
	}
	b.log.Info("retained message deleted through the admin API", "topic", topic, "remote", r.RemoteAddr)
	admin.WriteJSON(w, http.StatusOK, map[string]any{"ok": true, "topic": topic})
}
