package sdk

import (
	"bytes"
	"errors"
	"testing"
)

// retainedExample is sdk/ABI.md §8's worked example: topic "a/b", QoS 1,
// retain, message expiry 60 s, content type "text/plain", user property
// k=v, payload "hi". broker/clusterhook's TestSDKRetainedExample checks the
// broker encodes exactly these bytes.
var retainedExample = []byte{
	0x33,                      // PUBLISH (3<<4) | QoS 1 (1<<1) | RETAIN (1)
	0x23,                      // Remaining Length 35
	0x00, 0x03, 'a', '/', 'b', // topic
	0x00, 0x01, // packet identifier 1 (QoS > 0)
	0x19,                         // property length 25
	0x02, 0x00, 0x00, 0x00, 0x3c, // message expiry interval 60
	0x03, 0x00, 0x0a, 't', 'e', 'x', 't', '/', 'p', 'l', 'a', 'i', 'n', // content type
	0x26, 0x00, 0x01, 'k', 0x00, 0x01, 'v', // user property k=v
	'h', 'i', // payload
}

func TestDecodeRetainedExample(t *testing.T) {
	m, err := DecodeRetained(retainedExample)
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Topic) != "a/b" || m.QoS != 1 || !m.Retain || m.PacketID != 1 || string(m.Payload) != "hi" ||
		!m.HasMessageExpiry || m.MessageExpiry != 60 || string(m.ContentType) != "text/plain" ||
		m.HasPayloadFormat || m.ResponseTopic != nil || m.CorrelationData != nil || len(m.Properties) != 25 {
		t.Fatalf("decoded %+v", m)
	}
	if v, ok := m.UserProperty("k"); !ok || string(v) != "v" {
		t.Fatalf("user property k = %q, %v", v, ok)
	}
	if _, ok := m.UserProperty("missing"); ok {
		t.Fatal("found a user property that is not there")
	}
	if got := m.AppendTo(nil); !bytes.Equal(got, retainedExample) {
		t.Fatalf("re-encoded\n% x\nwant\n% x", got, retainedExample)
	}
}

// publish builds a value the way sdk/ABI.md §8 describes, from parts.
func publish(h byte, topic string, id []byte, props, payload []byte) []byte {
	var body []byte
	body = append(body, byte(len(topic)>>8), byte(len(topic)))
	body = append(body, topic...)
	body = append(body, id...)
	body = appendVarint(body, uint64(len(props)))
	body = append(body, props...)
	body = append(body, payload...)
	return append(appendVarint([]byte{h}, uint64(len(body))), body...)
}

func TestDecodeRetainedCases(t *testing.T) {
	allProps := []byte{
		0x01, 0x01, // payload format UTF-8
		0x02, 0xff, 0xff, 0xff, 0xff, // expiry
		0x03, 0x00, 0x01, 'c', // content type
		0x08, 0x00, 0x02, 'r', '/', // response topic
		0x09, 0x00, 0x03, 0x00, 0xff, 0x01, // correlation data (binary: NUL allowed)
		0x0b, 0x80, 0x01, // subscription identifier 128
		0x0b, 0x05, // and another
		0x23, 0x00, 0x07, // topic alias
		0x26, 0x00, 0x01, 'a', 0x00, 0x00, // user property a=""
		0x26, 0x00, 0x01, 'a', 0x00, 0x01, '2', // user property a=2 (repeats are allowed)
	}
	cases := []struct {
		name  string
		value []byte
		check func(t *testing.T, m Retained)
	}{
		{"QoS 0, no properties, empty payload", publish(0x31, "t", nil, nil, nil), func(t *testing.T, m Retained) {
			if m.QoS != 0 || !m.Retain || m.PacketID != 0 || len(m.Payload) != 0 || len(m.Properties) != 0 {
				t.Errorf("%+v", m)
			}
		}},
		{"QoS 2 without retain flag", publish(0x34, "t/ü", []byte{0x12, 0x34}, nil, []byte{0, 1}), func(t *testing.T, m Retained) {
			if m.QoS != 2 || m.Retain || m.PacketID != 0x1234 || string(m.Topic) != "t/ü" || !bytes.Equal(m.Payload, []byte{0, 1}) {
				t.Errorf("%+v", m)
			}
		}},
		{"every PUBLISH property", publish(0x30, "t", nil, allProps, []byte("p")), func(t *testing.T, m Retained) {
			if !m.HasPayloadFormat || m.PayloadFormat != 1 || m.MessageExpiry != 0xffffffff || string(m.ContentType) != "c" ||
				string(m.ResponseTopic) != "r/" || !bytes.Equal(m.CorrelationData, []byte{0, 0xff, 1}) {
				t.Errorf("%+v", m)
			}
			var got []string
			for k, v := range m.UserProperties() {
				got = append(got, string(k)+"="+string(v))
			}
			if len(got) != 2 || got[0] != "a=" || got[1] != "a=2" {
				t.Errorf("user properties %q", got)
			}
			if v, ok := m.UserProperty("a"); !ok || len(v) != 0 {
				t.Errorf("first a = %q, %v", v, ok)
			}
		}},
		{"large payload (3-byte Remaining Length)", publish(0x30, "t", nil, nil, make([]byte, 20000)), func(t *testing.T, m Retained) {
			if len(m.Payload) != 20000 {
				t.Errorf("payload %d bytes", len(m.Payload))
			}
		}},
		{"DUP flag is ignored", publish(0x3a, "t", []byte{0, 1}, nil, nil), func(t *testing.T, m Retained) {
			if m.QoS != 1 {
				t.Errorf("%+v", m)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := DecodeRetained(c.value)
			if err != nil {
				t.Fatal(err)
			}
			c.check(t, m)
		})
	}
}

func TestDecodeRetainedRejects(t *testing.T) {
	ok := publish(0x31, "t", nil, []byte{0x03, 0x00, 0x01, 'c'}, []byte("p"))
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte{}, ok...)) }
	cases := map[string][]byte{
		"empty":                       nil,
		"one byte":                    {0x30},
		"not a PUBLISH":               {0x20, 0x02, 0x00, 0x00},
		"QoS 3":                       publish(0x36, "t", []byte{0, 1}, nil, nil),
		"DUP with QoS 0":              publish(0x38, "t", nil, nil, nil),
		"Remaining Length too long":   mutate(func(b []byte) []byte { b[1]++; return b }),
		"Remaining Length too short":  mutate(func(b []byte) []byte { b[1]--; return b }),
		"Remaining Length of 5 bytes": {0x30, 0x80, 0x80, 0x80, 0x80, 0x00},
		"Remaining Length unfinished": {0x30, 0x80},
		"empty topic":                 publish(0x30, "", nil, nil, nil),
		"topic with NUL":              publish(0x30, "a\x00b", nil, nil, nil),
		"topic not UTF-8":             publish(0x30, "a\xffb", nil, nil, nil),
		"topic past the end":          {0x30, 0x04, 0x00, 0x05, 'a', 'b'},
		"packet id missing":           {0x32, 0x03, 0x00, 0x01, 't'},
		"packet id 0 with QoS 1":      publish(0x32, "t", []byte{0, 0}, nil, nil),
		"property length missing":     {0x30, 0x03, 0x00, 0x01, 't'},
		"property length past end":    publish(0x30, "t", nil, nil, nil)[:5],
		"unknown property":            publish(0x30, "t", nil, []byte{0x11, 0, 0, 0, 1}, nil),
		"CONNECT-only property":       publish(0x30, "t", nil, []byte{0x15, 0, 1, 'm'}, nil),
		"property value cut":          publish(0x30, "t", nil, []byte{0x02, 0, 0}, nil),
		"content type twice":          publish(0x30, "t", nil, []byte{0x03, 0, 1, 'a', 0x03, 0, 1, 'b'}, nil),
		"expiry twice":                publish(0x30, "t", nil, []byte{0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 1}, nil),
		"content type not UTF-8":      publish(0x30, "t", nil, []byte{0x03, 0, 1, 0xc0}, nil),
		"user property key with NUL":  publish(0x30, "t", nil, []byte{0x26, 0, 1, 0, 0, 0}, nil),
		"user property value missing": publish(0x30, "t", nil, []byte{0x26, 0, 1, 'k'}, nil),
		"subscription id unfinished":  publish(0x30, "t", nil, []byte{0x0b, 0x80}, nil),
	}
	for name, v := range cases {
		if _, err := DecodeRetained(v); !errors.Is(err, ErrMalformedRetained) {
			t.Errorf("%s: err %v, want ErrMalformedRetained", name, err)
		}
	}
}

func TestDecodeRetainedAllocatesNothing(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() {
		m, err := DecodeRetained(retainedExample)
		if err != nil {
			t.Fatal(err)
		}
		if v, ok := m.UserProperty("k"); !ok || len(v) != 1 {
			t.Fatal("user property")
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per decode, want 0", allocs)
	}
}

func TestAppendToNormalises(t *testing.T) {
	m := Retained{Topic: []byte("t"), QoS: 1, Payload: []byte("x")}
	got, err := DecodeRetained(m.AppendTo(nil))
	if err != nil || got.PacketID != 1 || got.QoS != 1 || got.Retain {
		t.Fatalf("%+v, %v", got, err)
	}
}

// FuzzDecodeRetained: DecodeRetained never panics; what it accepts
// re-encodes (AppendTo) to a value that decodes to the same message, and to
// the same bytes when the value's length prefixes are minimal and DUP is
// clear (always so for the broker's values).
func FuzzDecodeRetained(f *testing.F) {
	f.Add(retainedExample)
	f.Add(publish(0x31, "t", nil, nil, nil))
	f.Add(publish(0x34, "a/b/c", []byte{0, 1}, []byte{0x01, 0x01, 0x09, 0x00, 0x01, 0x00, 0x0b, 0x01, 0x23, 0x00, 0x01}, []byte("payload")))
	f.Fuzz(func(t *testing.T, v []byte) {
		m, err := DecodeRetained(v)
		if err != nil {
			if !errors.Is(err, ErrMalformedRetained) {
				t.Fatalf("error %v does not wrap ErrMalformedRetained", err)
			}
			return
		}
		again := m.AppendTo(nil)
		m2, err := DecodeRetained(again)
		if err != nil {
			t.Fatalf("re-encoded value refused: %v", err)
		}
		if !retainedEqual(&m, &m2) {
			t.Fatalf("re-decoded %+v, want %+v", m2, m)
		}
		if v[0]&0x08 == 0 && minimalVarints(v, &m) && !bytes.Equal(again, v) {
			t.Fatalf("re-encoded\n% x\nfrom\n% x", again, v)
		}
		for range m.UserProperties() {
		}
	})
}

func minimalVarints(v []byte, m *Retained) bool {
	rem, n, _ := uvarint(v[1:])
	if n != varintLen(rem) {
		return false
	}
	off := 1 + n + 2 + len(m.Topic)
	if m.QoS > 0 {
		off += 2
	}
	plen, pn, _ := uvarint(v[off:])
	return pn == varintLen(plen)
}

func retainedEqual(a, b *Retained) bool {
	return bytes.Equal(a.Topic, b.Topic) && a.QoS == b.QoS && a.Retain == b.Retain && a.PacketID == b.PacketID &&
		bytes.Equal(a.Payload, b.Payload) && a.PayloadFormat == b.PayloadFormat && a.HasPayloadFormat == b.HasPayloadFormat &&
		a.MessageExpiry == b.MessageExpiry && a.HasMessageExpiry == b.HasMessageExpiry &&
		bytes.Equal(a.ContentType, b.ContentType) && (a.ContentType == nil) == (b.ContentType == nil) &&
		bytes.Equal(a.ResponseTopic, b.ResponseTopic) && (a.ResponseTopic == nil) == (b.ResponseTopic == nil) &&
		bytes.Equal(a.CorrelationData, b.CorrelationData) && (a.CorrelationData == nil) == (b.CorrelationData == nil) &&
		bytes.Equal(a.Properties, b.Properties)
}
