package router

import (
	"bytes"
	"reflect"
	"testing"
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

// FuzzDecodeForward: the decoder reads what peers send: it must reject
// garbage, never panic, and round-trip what it accepts.
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
