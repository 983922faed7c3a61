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
		msg    []byte
	}{
		{nil, []byte{0x30, 0x03, 0, 1, 'a'}},
		{[]string{"$share/g/a/#", "$share/h/+"}, []byte("payload")},
		{[]string{""}, nil},
	} {
		g, m, err := decodeForward(appendForward(nil, tc.groups, tc.msg))
		if err != nil {
			t.Fatal(err)
		}
		if len(g) != len(tc.groups) || (len(g) > 0 && !reflect.DeepEqual(g, tc.groups)) || !bytes.Equal(m, tc.msg) {
			t.Fatalf("round trip: got %q %q want %q %q", g, m, tc.groups, tc.msg)
		}
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
	f.Add(appendForward(nil, []string{"$share/g/t"}, []byte("m")))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		g, m, err := decodeForward(b)
		if err != nil {
			return
		}
		// Varints have non-minimal encodings, so compare values, not bytes.
		g2, m2, err := decodeForward(appendForward(nil, g, m))
		if err != nil || len(g2) != len(g) || (len(g) > 0 && !reflect.DeepEqual(g2, g)) || !bytes.Equal(m2, m) {
			t.Fatalf("forward does not round-trip: %q %q vs %q %q (%v)", g, m, g2, m2, err)
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
