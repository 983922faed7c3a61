package registry

import (
	"bytes"
	"testing"

	"github.com/mendmq/mendmq/cluster/hlc"
)

func TestTakeoverAndSessionMsgsRoundTrip(t *testing.T) {
	for _, tk := range []Takeover{{}, {From: "n1"}, {From: "n2", Session: []byte(`{"x":1}`), At: hlc.Timestamp{Wall: 1730000000000, Logical: 4}}} {
		got, err := decodeTakeover(appendTakeover(nil, tk))
		if err != nil || got.From != tk.From || !bytes.Equal(got.Session, tk.Session) || got.At != tk.At {
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
	for _, c := range []claim{{"c1", "n1", true, hlc.Timestamp{}}, {"", "", false, hlc.Timestamp{Wall: 1}}, {"ü/$x", "node-2", false, hlc.Timestamp{Wall: hlc.MaxWall, Logical: 9}}} {
		got, err := decodeClaim(c.append(nil))
		if err != nil || got != c {
			t.Fatalf("claim %+v: got %+v, %v", c, got, err)
		}
	}
	if _, err := decodeClaim(append(claim{"a", "b", false, hlc.Timestamp{}}.append(nil), 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
	if _, err := decodeClaim([]byte{0, 1, 'a', 1, 'b'}); err == nil {
		t.Fatal("claim without a stamp accepted")
	}
}

func FuzzDecodeTakeover(f *testing.F) {
	f.Add(appendTakeover(nil, Takeover{From: "n1", Session: []byte("s")}))
	f.Add(appendSessionMsgs(nil, "c", []byte("m")))
	f.Add([]byte{0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		if tk, err := decodeTakeover(b); err == nil {
			if got, err := decodeTakeover(appendTakeover(nil, tk)); err != nil || got.From != tk.From || !bytes.Equal(got.Session, tk.Session) || got.At != tk.At {
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
	f.Add(claim{"c", "n", true, hlc.Timestamp{}}.append(nil))
	f.Add(claim{"c", "n", false, hlc.Timestamp{Wall: 1730000000000, Logical: 2}}.append(nil))
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
