package clusterhook

import (
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/cluster/replica"
	"github.com/mendmq/mendmq/cluster/retained"
	"github.com/mendmq/mendmq/sdk"
)

// TestRetainedPolicyViewReadsWithSDK follows a retained message from a
// client's publish to what a $retained policy sees: the broker's
// replicated message, the cluster's EntryView of it, and the SDK's
// decoder, which must read the packet and find the times the view
// carries.
func TestRetainedPolicyViewReadsWithSDK(t *testing.T) {
	created := time.Unix(1_700_000_000, 0)
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true},
		TopicName:   "a/b",
		Payload:     []byte("hi"),
		Created:     created.Unix(),
		Properties:  packets.Properties{MessageExpiryInterval: 60, User: []packets.UserProperty{{Key: "origin", Val: "n1"}}},
	}
	m, err := retainedMessage(pk, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	m.Version = 2
	v := retained.View("a/b", replica.Sibling{Node: "n1", TS: 1_700_000_005_000, Value: retained.Encode(m)})
	got, err := sdk.DecodeRetained(v.Value)
	if err != nil {
		t.Fatalf("the SDK cannot read what the policy gets: %v", err)
	}
	if string(got.Topic) != "a/b" || string(got.Payload) != "hi" || got.QoS != 1 || got.MessageExpiry != 60 {
		t.Fatalf("SDK read %+v", got)
	}
	if origin, ok := got.UserProperty("origin"); !ok || string(origin) != "n1" {
		t.Fatalf("user property origin = %q %v", origin, ok)
	}
	if v.CreationTime != created.UnixMilli() || v.ExpirationTime != created.Add(time.Minute).UnixMilli() ||
		v.Version != 2 || v.LastUpdateTime != 1_700_000_005_000 || v.Cost != int64(len(v.Value)) {
		t.Fatalf("view %+v", v)
	}
}
