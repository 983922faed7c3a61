package quirks_test

import (
	"reflect"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/quirks"
)

func TestCleanAck(t *testing.T) {
	echoed := packets.Properties{User: []packets.UserProperty{{Key: "k", Val: "v"}}, ContentType: "c", ResponseTopic: "r"}
	withReason := echoed
	withReason.ReasonString = "why"
	for _, tc := range []struct {
		name       string
		typ, code  byte
		props      packets.Properties
		wantCode   byte
		wantReason string
	}{
		{"puback granted qos 1 (mochi)", packets.Puback, 0x01, echoed, 0x00, ""},
		{"puback success", packets.Puback, 0x00, echoed, 0x00, ""},
		{"puback no matching subscribers", packets.Puback, 0x10, echoed, 0x10, ""},
		{"puback not authorized", packets.Puback, 0x87, withReason, 0x87, "why"},
		{"puback quota exceeded", packets.Puback, 0x97, withReason, 0x97, "why"},
		{"puback server unavailable (not a puback code)", packets.Puback, 0x88, withReason, 0x80, "why"},
		{"pubrec id in use", packets.Pubrec, 0x91, withReason, 0x91, "why"},
		{"pubrec granted qos 2", packets.Pubrec, 0x02, echoed, 0x00, ""},
		{"pubrel success", packets.Pubrel, 0x00, withReason, 0x00, ""},
		{"pubrel not found", packets.Pubrel, 0x92, withReason, 0x92, "why"},
		{"pubrel not authorized (not a pubrel code)", packets.Pubrel, 0x87, withReason, 0x92, "why"},
		{"pubcomp success", packets.Pubcomp, 0x00, echoed, 0x00, ""},
		{"pubcomp not found", packets.Pubcomp, 0x92, withReason, 0x92, "why"},
		{"pubcomp granted qos 1", packets.Pubcomp, 0x01, echoed, 0x00, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: tc.typ}, PacketID: 7, ReasonCode: tc.code, Properties: tc.props}
			quirks.CleanAck(&pk)
			want := packets.Packet{FixedHeader: packets.FixedHeader{Type: tc.typ}, PacketID: 7, ReasonCode: tc.wantCode,
				Properties: packets.Properties{ReasonString: tc.wantReason}}
			if !reflect.DeepEqual(pk, want) {
				t.Errorf("CleanAck = code 0x%02x %+v, want code 0x%02x reason %q", pk.ReasonCode, pk.Properties, tc.wantCode, tc.wantReason)
			}
		})
	}
}
