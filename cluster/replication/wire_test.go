package replication

import (
	"reflect"
	"testing"

	"github.com/mendmq/mendmq/cluster/replica"
)

func TestRepairRoundTrip(t *testing.T) {
	sets := []replica.BucketSet{{Table: "sub", Buckets: []int{0, 5, 1023}}, {Table: "ret", Buckets: nil}}
	gs, gd, err := decodeRepair(appendRepair(nil, sets, nil))
	if err != nil || len(gd) != 0 || len(gs) != 2 || gs[0].Table != "sub" || !reflect.DeepEqual(gs[0].Buckets, sets[0].Buckets) || gs[1].Table != "ret" {
		t.Fatalf("repair round trip: %+v %+v %v", gs, gd, err)
	}
}

func FuzzDecodeRepair(f *testing.F) {
	f.Add(appendRepair(nil, []replica.BucketSet{{Table: "sub", Buckets: []int{1, 2}}}, nil))
	f.Add([]byte{3, 1, 'x', 0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _ = decodeRepair(b)
	})
}
