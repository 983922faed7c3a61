package quirks_test

import (
	"reflect"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/quirks"
)

func TestPublishOrder(t *testing.T) {
	pk := func(created int64, id uint16) packets.Packet {
		return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, Created: created, PacketID: id}
	}
	for _, tc := range []struct {
		name string
		in   []packets.Packet
		want []uint16 // ids in publish order
	}{
		{"ids within a second", []packets.Packet{pk(10, 3), pk(10, 1), pk(10, 2)}, []uint16{1, 2, 3}},
		{"seconds first", []packets.Packet{pk(11, 1), pk(10, 7), pk(10, 5)}, []uint16{5, 7, 1}},
		{"wrapped within a second", []packets.Packet{pk(10, 2), pk(10, 65534), pk(10, 1), pk(10, 65535)}, []uint16{65534, 65535, 1, 2}},
		{"wrapped across seconds", []packets.Packet{pk(11, 1), pk(10, 65535)}, []uint16{65535, 1}},
		{"creation time above 16 bits", []packets.Packet{pk(1<<16, 1), pk(1<<16-1, 2)}, []uint16{2, 1}},
		{"one", []packets.Packet{pk(1, 1)}, []uint16{1}},
		{"none", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			quirks.PublishOrder(tc.in)
			var got []uint16
			for _, p := range tc.in {
				got = append(got, p.PacketID)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("order %v, want %v", got, tc.want)
			}
		})
	}
}
