package retained

import (
	"bytes"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster/merge"
	"github.com/mendmq/mendmq/cluster/replica"
)

// publish is a minimal MQTT PUBLISH packet: topic "t", payload p.
func publish(p string) []byte {
	body := append([]byte{0, 1, 't'}, p...)
	return append([]byte{0x31, byte(len(body))}, body...)
}

func TestEncodeDecode(t *testing.T) {
	created := time.UnixMilli(1_700_000_000_123)
	for _, m := range []Message{
		{Publish: publish("x"), Created: created},
		{Publish: publish("y"), Created: created, Expires: created.Add(time.Minute), Version: 7},
	} {
		got, err := Decode(Encode(m))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Publish, m.Publish) || !got.Created.Equal(m.Created) || !got.Expires.Equal(m.Expires) || got.Version != m.Version {
			t.Fatalf("round trip: %+v, want %+v", got, m)
		}
	}
	for _, bad := range [][]byte{nil, {2, 0, 0, 0, 0x30, 0}, {1, 0x80}, {1, 0, 0, 0}} {
		if _, err := Decode(bad); err == nil {
			t.Errorf("%x decoded", bad)
		}
	}
}

// FuzzDecode: replicated values come from peers: never panic, and what
// decodes re-encodes to the same message.
func FuzzDecode(f *testing.F) {
	f.Add(Encode(Message{Publish: publish("x"), Created: time.UnixMilli(5), Version: 1}))
	f.Add([]byte{1, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
		}
		m2, err := Decode(Encode(m))
		if err != nil || !bytes.Equal(m2.Publish, m.Publish) || !m2.Created.Equal(m.Created) || !m2.Expires.Equal(m.Expires) || m2.Version != m.Version {
			t.Fatalf("does not round-trip: %+v vs %+v (%v)", m, m2, err)
		}
	})
}

func sibling(node string, ts int64, m Message) replica.Sibling {
	return replica.Sibling{Node: node, TS: ts, Value: Encode(m)}
}

// TestView: what a $retained policy sees.
func TestView(t *testing.T) {
	created := time.UnixMilli(1000)
	s := sibling("a", 2000, Message{Publish: publish("x"), Created: created, Expires: created.Add(time.Second), Version: 3})
	v := View("t", s)
	want := merge.EntryView{Key: []byte("t"), Value: publish("x"), Cost: int64(len(publish("x"))), Version: 3,
		CreationTime: 1000, ExpirationTime: 2000, LastUpdateTime: 2000, LastStoredTime: 2000}
	if string(v.Key) != "t" || !bytes.Equal(v.Value, want.Value) || v.Cost != want.Cost || v.Version != 3 || v.CreationTime != 1000 ||
		v.ExpirationTime != 2000 || v.LastUpdateTime != 2000 || v.LastStoredTime != 2000 || v.Hits != 0 {
		t.Fatalf("view %+v, want %+v", v, want)
	}
}

// TestDecide: each verdict of the policy, and a deletion decided without it.
func TestDecide(t *testing.T) {
	m := Merged(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	existing := sibling("a", 10, Message{Publish: publish("old"), Created: time.UnixMilli(1), Version: 4})
	merging := sibling("b", 20, Message{Publish: publish("new"), Created: time.UnixMilli(2), Version: 1})
	payload := func(s replica.Sibling) string {
		if s.Deleted {
			return "<deleted>"
		}
		d, err := Decode(s.Value)
		if err != nil {
			return "<bad>"
		}
		return string(d.Publish[5:])
	}
	built := merge.EntryView{Value: publish("built"), CreationTime: 7}
	for _, tc := range []struct {
		name string
		r    merge.Result
		want string
	}{
		{"keep", merge.Result{Verdict: merge.KeepExisting}, "old"},
		{"take", merge.Result{Verdict: merge.TakeMerging}, "new"},
		{"delete", merge.Result{Verdict: merge.Delete}, "<deleted>"},
		{"put", merge.Result{Verdict: merge.Put, Entry: &built}, "built"},
		{"put garbage", merge.Result{Verdict: merge.Put, Entry: &merge.EntryView{Value: []byte("not mqtt")}}, "old"},
		{"parked", merge.Result{Verdict: merge.KeepExisting, ConflictID: 9}, "old"},
	} {
		got := m.Decide("t", existing, merging, tc.r)
		if payload(got) != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, payload(got), tc.want)
		}
		if tc.name == "put" {
			d, _ := Decode(got.Value)
			if d.Version != 5 || d.Created.UnixMilli() != 7 || got.TS != 20 {
				t.Errorf("put: version %d created %v ts %d", d.Version, d.Created, got.TS)
			}
		}
	}
	tomb := replica.Sibling{Node: "c", TS: 30, Deleted: true}
	if got, ok := m.Direct("t", existing, tomb); !ok || !got.Deleted {
		t.Fatalf("a later deletion: %+v %v", got, ok)
	}
	if _, ok := m.Direct("t", existing, merging); ok {
		t.Fatal("two messages decided without the policy")
	}
}
