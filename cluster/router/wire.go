package router

import (
	"encoding/binary"
	"slices"

	"github.com/mendmq/mendmq/cluster/internal/wire"
)

const maxGroups = 1 << 16

// appendForward encodes a forwarded publish: the shared subscriptions
// ("$share/g/f") the receiver must serve, the publish's id (unique per
// sending node; see Delivery.ID), then the encoded message.
func appendForward(b []byte, groups []string, id uint64, msg []byte) []byte {
	n := 2*binary.MaxVarintLen64 + len(msg)
	for _, g := range groups {
		n += binary.MaxVarintLen64 + len(g)
	}
	b = slices.Grow(b, n) // one allocation, not one per append
	b = binary.AppendUvarint(b, uint64(len(groups)))
	for _, g := range groups {
		b = wire.AppendStr(b, g)
	}
	b = binary.AppendUvarint(b, id)
	return append(b, msg...)
}

func decodeForward(b []byte) (groups []string, id uint64, msg []byte, err error) {
	r := wire.NewReader(b)
	n := r.Uvarint()
	if n > maxGroups {
		r.Fail("%d groups", n)
	}
	for i := uint64(0); i < n && r.Err() == nil; i++ {
		groups = append(groups, r.Str(wire.MaxName))
	}
	id = r.Uvarint()
	if r.Err() != nil {
		return nil, 0, nil, r.Err()
	}
	return groups, id, r.Rest(), nil
}
