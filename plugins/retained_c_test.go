package plugins

import (
	"bytes"
	"context"
	"encoding/binary"
	"path/filepath"
	"testing"

	"github.com/mendmq/mendmq/sdk"
)

// retainedDump is the layout testdata/retained/retained.c writes for a
// decoded retained message, built here from the Go SDK's decoder.
func retainedDump(m *sdk.Retained) []byte {
	b2u := func(v bool) uint32 {
		if v {
			return 1
		}
		return 0
	}
	var b []byte
	u := func(v uint32) { b = binary.LittleEndian.AppendUint32(b, v) }
	str := func(present bool, s []byte) {
		u(b2u(present))
		u(uint32(len(s)))
		b = append(b, s...)
	}
	u(uint32(m.QoS))
	u(b2u(m.Retain))
	u(uint32(m.PacketID))
	u(b2u(m.HasPayloadFormat))
	u(uint32(m.PayloadFormat))
	u(b2u(m.HasMessageExpiry))
	u(m.MessageExpiry)
	str(true, m.Topic)
	str(true, m.Payload)
	str(m.ContentType != nil, m.ContentType)
	str(m.ResponseTopic != nil, m.ResponseTopic)
	str(m.CorrelationData != nil, m.CorrelationData)
	str(true, m.Properties)
	var n uint32
	var users []byte
	for k, v := range m.UserProperties() {
		n++
		users = binary.LittleEndian.AppendUint32(users, 1)
		users = binary.LittleEndian.AppendUint32(users, uint32(len(k)))
		users = append(users, k...)
		users = binary.LittleEndian.AppendUint32(users, 1)
		users = binary.LittleEndian.AppendUint32(users, uint32(len(v)))
		users = append(users, v...)
	}
	u(n)
	b = append(b, users...)
	v, ok := m.UserProperty("k")
	str(ok, v)
	return b
}

// cRetainedRegistry builds testdata/retained/retained.c and makes it the
// $retained policy.
func cRetainedRegistry(t testing.TB) *Registry {
	t.Helper()
	out := filepath.Join(t.TempDir(), "retained.wasm")
	buildC(t, "testdata/retained/retained.c", out)
	cfg := testConfig()
	cfg.Policies["cretained"] = PolicyConfig{Module: out}
	cfg.Retained.MergePolicy = "cretained"
	cfg.Maps[DefaultMap] = MapConfig{MergePolicy: "cretained"}
	// No test logger: the fuzz target may not log through f (t.Helper).
	r, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// checkCRetained runs the C decoder (inside the module) on value and holds
// it to sdk.DecodeRetained: both refuse it, or both read the same fields.
func checkCRetained(t *testing.T, r *Registry, value []byte) {
	t.Helper()
	res, err := r.Merge(context.Background(), RetainedMap, &EntryView{Key: []byte("t"), Value: value}, nil)
	if err != nil || res.ConflictID != 0 {
		t.Fatalf("merge: %+v, %v", res, err)
	}
	m, gerr := sdk.DecodeRetained(value)
	switch {
	case gerr != nil && res.Verdict != Delete:
		t.Fatalf("C accepted what Go refuses (%v):\n% x", gerr, value)
	case gerr == nil && res.Verdict != Put:
		t.Fatalf("C refused (%s) what Go accepts:\n% x", res.Verdict, value)
	case gerr == nil && !bytes.Equal(res.Entry.Value, retainedDump(&m)):
		t.Fatalf("C and Go decode differently:\nC  % x\nGo % x\nvalue % x", res.Entry.Value, retainedDump(&m), value)
	}
}

// retainedSeeds are values both decoders are tested on: the ABI.md §8
// example, every PUBLISH property, and refusals.
var retainedSeeds = [][]byte{
	{0x33, 0x23, 0x00, 0x03, 'a', '/', 'b', 0x00, 0x01, 0x19, 0x02, 0x00, 0x00, 0x00, 0x3c,
		0x03, 0x00, 0x0a, 't', 'e', 'x', 't', '/', 'p', 'l', 'a', 'i', 'n', 0x26, 0x00, 0x01, 'k', 0x00, 0x01, 'v', 'h', 'i'},
	{0x31, 0x04, 0x00, 0x01, 't', 0x00},
	{0x34, 0x30, 0x00, 0x04, 't', '/', 0xc3, 0xbc, 0x12, 0x34, 0x23,
		0x01, 0x01, 0x02, 0xff, 0xff, 0xff, 0xff, 0x03, 0x00, 0x01, 'c', 0x08, 0x00, 0x02, 'r', '/',
		0x09, 0x00, 0x03, 0x00, 0xff, 0x01, 0x0b, 0x80, 0x01, 0x0b, 0x05, 0x23, 0x00, 0x07,
		0x26, 0x00, 0x01, 'k', 0x00, 0x00, 0x26, 0x00, 0x01, 'k', 0x00, 0x01, '2', 'p', 'q'},
	{0x30, 0x80, 0x80, 0x80, 0x80, 0x00},                             // Remaining Length of 5 bytes
	{0x32, 0x06, 0x00, 0x01, 't', 0x00, 0x00, 0x00},                  // packet id 0
	{0x30, 0x06, 0x00, 0x01, 't', 0x02, 0x03, 0x00},                  // property cut
	{0x30, 0x08, 0x00, 0x03, 'a', 0xed, 0xa0, 0x00},                  // surrogate in the topic
	{0x30, 0x09, 0x00, 0x04, 0xf4, 0x90, 0x80, 0x80, 0x00},           // above U+10FFFF
	{0x30, 0x09, 0x00, 0x04, 0xf0, 0x9f, 0x98, 0x80, 0x00},           // U+1F600: valid
	{0x30, 0x0a, 0x00, 0x01, 't', 0x05, 0x03, 0x00, 0x01, 0xc1, 'x'}, // overlong in content type
}

// TestCRetainedHeader: sdk/c/mendmq_retained.h reads the seeds as the Go
// SDK does.
func TestCRetainedHeader(t *testing.T) {
	r := cRetainedRegistry(t)
	for _, v := range retainedSeeds {
		checkCRetained(t, r, v)
	}
	// The ABI.md example, field by field through the C module.
	res, err := r.Merge(context.Background(), RetainedMap, &EntryView{Key: []byte("a/b"), Value: retainedSeeds[0]}, nil)
	if err != nil || res.Verdict != Put {
		t.Fatalf("%+v, %v", res, err)
	}
	if v := res.Entry.Value; binary.LittleEndian.Uint32(v) != 1 || binary.LittleEndian.Uint32(v[24:]) != 60 ||
		!bytes.HasSuffix(v, []byte{1, 0, 0, 0, 1, 0, 0, 0, 'v'}) {
		t.Fatalf("C read % x", v)
	}
}

// FuzzCRetainedMatchesGo: on any bytes, the C header and the Go SDK accept
// the same values and read the same fields (and the Go SDK reads what the
// broker does: broker/clusterhook's FuzzSDKRetainedBytes).
func FuzzCRetainedMatchesGo(f *testing.F) {
	for _, v := range retainedSeeds {
		f.Add(v)
	}
	r := cRetainedRegistry(f)
	f.Fuzz(func(t *testing.T, v []byte) { checkCRetained(t, r, v) })
}
