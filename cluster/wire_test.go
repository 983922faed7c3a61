package cluster

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/mendmq/mendmq/cluster/replica"
)

func TestForwardRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		groups []string
		id     uint64
		msg    []byte
	}{
		{nil, 0, []byte{0x30, 0x03, 0, 1, 'a'}},
		{[]string{"$share/g/a/#", "$share/h/+"}, 1 << 63, []byte("payload")},
		{[]string{""}, 7, nil},
	} {
		g, id, m, err := decodeForward(appendForward(nil, tc.groups, tc.id, tc.msg))
		if err != nil {
			t.Fatal(err)
		}
		if !sameStrs(g, tc.groups) || id != tc.id || !bytes.Equal(m, tc.msg) {
			t.Fatalf("round trip: got %q %d %q want %q %d %q", g, id, m, tc.groups, tc.id, tc.msg)
		}
	}
	if _, _, _, err := decodeForward([]byte{0, 0xff}); err == nil {
		t.Fatal("a forward with a truncated id was accepted")
	}
}

func sameStrs(a, b []string) bool {
	return len(a) == len(b) && (len(a) == 0 || reflect.DeepEqual(a, b))
}

func TestTakeoverAndSessionMsgsRoundTrip(t *testing.T) {
	for _, tk := range []Takeover{{}, {From: "n1"}, {From: "n2", Session: []byte(`{"x":1}`)}} {
		got, err := decodeTakeover(appendTakeover(nil, tk))
		if err != nil || got.From != tk.From || !bytes.Equal(got.Session, tk.Session) {
			t.Fatalf("takeover %+v: got %+v, %v", tk, got, err)
		}
	}
	id, msgs, err := decodeSessionMsgs(appendSessionMsgs(nil, "c1", []byte("m")))
	if err != nil || id != "c1" || string(msgs) != "m" {
		t.Fatalf("session msgs: %q %q %v", id, msgs, err)
	}
	if _, _, err := decodeSessionMsgs(appendSessionMsgs(nil, "", nil)); err == nil {
		t.Fatal("messages for an empty client id accepted")
	}
}

func TestClaimRoundTrip(t *testing.T) {
	for _, c := range []claim{{"c1", "n1", true}, {"", "", false}, {"ü/$x", "node-2", false}} {
		got, err := decodeClaim(c.append(nil))
		if err != nil || got != c {
			t.Fatalf("claim %+v: got %+v, %v", c, got, err)
		}
	}
	if _, err := decodeClaim(append(claim{"a", "b", false}.append(nil), 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
}

func TestRepairRoundTrip(t *testing.T) {
	sets := []replica.BucketSet{{Table: "sub", Buckets: []int{0, 5, 1023}}, {Table: "ret", Buckets: nil}}
	gs, gd, err := decodeRepair(appendRepair(nil, sets, nil))
	if err != nil || len(gd) != 0 || len(gs) != 2 || gs[0].Table != "sub" || !reflect.DeepEqual(gs[0].Buckets, sets[0].Buckets) || gs[1].Table != "ret" {
		t.Fatalf("repair round trip: %+v %+v %v", gs, gd, err)
	}
}

// The decoders read what peers send: they must reject garbage, never
// panic, and round-trip what they accept.
func FuzzDecodeForward(f *testing.F) {
	f.Add(appendForward(nil, []string{"$share/g/t"}, 42, []byte("m")))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		g, id, m, err := decodeForward(b)
		if err != nil {
			return
		}
		// Varints have non-minimal encodings, so compare values, not bytes.
		g2, id2, m2, err := decodeForward(appendForward(nil, g, id, m))
		if err != nil || !sameStrs(g2, g) || id2 != id || !bytes.Equal(m2, m) {
			t.Fatalf("forward does not round-trip: %q %d %q vs %q %d %q (%v)", g, id, m, g2, id2, m2, err)
		}
	})
}

func FuzzDecodeTakeover(f *testing.F) {
	f.Add(appendTakeover(nil, Takeover{From: "n1", Session: []byte("s")}))
	f.Add(appendSessionMsgs(nil, "c", []byte("m")))
	f.Add([]byte{0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		if tk, err := decodeTakeover(b); err == nil {
			if got, err := decodeTakeover(appendTakeover(nil, tk)); err != nil || got.From != tk.From || !bytes.Equal(got.Session, tk.Session) {
				t.Fatalf("takeover does not round-trip: %+v %v", got, err)
			}
		}
		if id, msgs, err := decodeSessionMsgs(b); err == nil {
			if id2, msgs2, err := decodeSessionMsgs(appendSessionMsgs(nil, id, msgs)); err != nil || id2 != id || !bytes.Equal(msgs2, msgs) {
				t.Fatalf("session msgs do not round-trip: %q %q %v", id2, msgs2, err)
			}
		}
	})
}

func FuzzDecodeClaim(f *testing.F) {
	f.Add(claim{"c", "n", true}.append(nil))
	f.Add([]byte{1, 0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeClaim(b)
		if err != nil {
			return
		}
		if got, err := decodeClaim(c.append(nil)); err != nil || got != c {
			t.Fatalf("claim does not round-trip: %+v %v", got, err)
		}
	})
}

func FuzzDecodeRepair(f *testing.F) {
	f.Add(appendRepair(nil, []replica.BucketSet{{Table: "sub", Buckets: []int{1, 2}}}, nil))
	f.Add([]byte{3, 1, 'x', 0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _ = decodeRepair(b)
	})
}
