package sdk

import (
	"testing"
)

func FuzzDecodeRequest(f *testing.F) {
	f.Add(AppendRequest(nil, "orders", sampleItems()))
	f.Add(AppendRequest(nil, "", sampleItems()[:1]))
	f.Add([]byte{1, 0, 0, 0, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, buf []byte) {
		name, items, err := DecodeRequest(buf, nil)
		if err != nil {
			return
		}
		// A decodable request re-encodes to the same size and decodes to
		// the same values (padding bytes may differ).
		again := AppendRequest(nil, string(name), items)
		if len(again) != len(buf) {
			t.Fatalf("re-encoded %d bytes from %d", len(again), len(buf))
		}
		name2, items2, err := DecodeRequest(again, nil)
		if err != nil || string(name2) != string(name) || !itemsEqual(items, items2) {
			t.Fatalf("re-decode: %v", err)
		}
		// The dispatcher answers any valid request with a decodable result
		// per item.
		d := &dispatcher{policy: func(_ string, m, e *EntryView) Result {
			if e == nil {
				return Put(m)
			}
			return Fail(string(m.Key))
		}}
		out, err := d.handle(buf, true)
		if err != nil {
			t.Fatal(err)
		}
		res, err := DecodeResults(out, nil)
		if err != nil || len(res) != len(items) {
			t.Fatalf("results %d, %v", len(res), err)
		}
	})
}

func FuzzDecodeResults(f *testing.F) {
	e := sample("k", "v", 3)
	seed := AppendResultsHeader(nil, 3)
	seed = AppendResult(seed, Put(&e))
	seed = AppendResult(seed, Fail("why"))
	seed = AppendResult(seed, Delete())
	f.Add(seed)
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, buf []byte) {
		res, err := DecodeResults(buf, nil)
		if err != nil {
			return
		}
		again := AppendResultsHeader(nil, len(res))
		for _, r := range res {
			again = AppendResult(again, r)
		}
		if len(again) != len(buf) {
			t.Fatalf("re-encoded %d bytes from %d", len(again), len(buf))
		}
		res2, err := DecodeResults(again, nil)
		if err != nil || len(res2) != len(res) {
			t.Fatalf("re-decode: %v", err)
		}
		for i := range res {
			if res[i].Verdict != res2[i].Verdict || res[i].Reason != res2[i].Reason ||
				(res[i].Entry != nil && !entryEqual(res[i].Entry, res2[i].Entry)) {
				t.Fatalf("result %d changed: %+v -> %+v", i, res[i], res2[i])
			}
		}
	})
}
