package main

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The benchmark payload is a fixed little-endian header followed by zero padding up
// to the configured payload size:
//
//	offset size field
//	0      2    magic 0x4D42 ("BM" little-endian), rejects foreign traffic cheaply
//	2      1    kind: 0 = measured message, 1 = probe (path check before measuring)
//	3      1    format version, currently 1
//	4      4    run id: random per run, so stale messages of an earlier run are not counted
//	8      4    pair index: which publisher sent it (cross-talk shows up as foreign)
//	12     8    sequence number, 0-based per publisher
//	20     8    send time, nanoseconds since the run's monotonic base
//	28     -    padding
const (
	payloadMagic   = 0x4D42
	payloadVersion = 1
	// minPayloadSize is the smallest payload that holds the header.
	minPayloadSize = 28

	kindData  byte = 0
	kindProbe byte = 1
)

// errPayload marks a payload that is not a well-formed benchmark payload.
var errPayload = errors.New("mqttbench: not a benchmark payload")

// stamp is the decoded header of one benchmark payload.
type stamp struct {
	Kind   byte
	RunID  uint32
	Pair   uint32
	Seq    uint64
	SentNs int64
}

// encodeStamp writes s into the header of buf; the padding after the header is left
// as it is (callers allocate buf once, zeroed, and rewrite only the header).
// buf must be at least minPayloadSize long.
func encodeStamp(buf []byte, s stamp) {
	_ = buf[minPayloadSize-1] // one bounds check for the whole header
	binary.LittleEndian.PutUint16(buf[0:], payloadMagic)
	buf[2] = s.Kind
	buf[3] = payloadVersion
	binary.LittleEndian.PutUint32(buf[4:], s.RunID)
	binary.LittleEndian.PutUint32(buf[8:], s.Pair)
	binary.LittleEndian.PutUint64(buf[12:], s.Seq)
	binary.LittleEndian.PutUint64(buf[20:], uint64(s.SentNs))
}

// decodeStamp reads the header of a benchmark payload. It never panics on any input.
func decodeStamp(buf []byte) (stamp, error) {
	if len(buf) < minPayloadSize {
		return stamp{}, fmt.Errorf("%w: %d bytes, need at least %d", errPayload, len(buf), minPayloadSize)
	}
	if m := binary.LittleEndian.Uint16(buf[0:]); m != payloadMagic {
		return stamp{}, fmt.Errorf("%w: magic %#04x", errPayload, m)
	}
	if buf[3] != payloadVersion {
		return stamp{}, fmt.Errorf("%w: format version %d, want %d", errPayload, buf[3], payloadVersion)
	}
	s := stamp{
		Kind:   buf[2],
		RunID:  binary.LittleEndian.Uint32(buf[4:]),
		Pair:   binary.LittleEndian.Uint32(buf[8:]),
		Seq:    binary.LittleEndian.Uint64(buf[12:]),
		SentNs: int64(binary.LittleEndian.Uint64(buf[20:])),
	}
	if s.Kind != kindData && s.Kind != kindProbe {
		return stamp{}, fmt.Errorf("%w: kind %d", errPayload, s.Kind)
	}
	return s, nil
}
