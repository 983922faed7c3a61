package main

import (
	"testing"

	"github.com/mendmq/mendmq/sdk"
)

func TestMerge(t *testing.T) {
	cases := []struct {
		name              string
		merging, existing string // existing "" = absent
		verdict           sdk.Verdict
		want              string
	}{
		{"absent takes merging", `{"a":{"v":1,"ts":1}}`, "", sdk.VerdictTakeMerging, ""},
		{"newer field wins per field",
			`{"a":{"v":"new","ts":5},"b":{"v":"old","ts":1}}`,
			`{"a":{"v":"old","ts":4},"b":{"v":"new","ts":2},"c":{"v":true,"ts":1}}`,
			sdk.VerdictPut, `{"a":{"v":"new","ts":5},"b":{"v":"new","ts":2},"c":{"v":true,"ts":1}}`},
		{"tie goes to merging", `{"a":{"v":"m","ts":3}}`, `{"a":{"v":"e","ts":3}}`,
			sdk.VerdictPut, `{"a":{"v":"m","ts":3}}`},
		{"tombstone wins over older write", `{"a":{"v":null,"ts":9}}`, `{"a":{"v":{"x":1},"ts":8}}`,
			sdk.VerdictPut, `{"a":{"v":null,"ts":9}}`},
		{"invalid merging refused", `not json`, `{}`, sdk.VerdictFail, ""},
		{"invalid existing refused", `{}`, `[1,2]`, sdk.VerdictFail, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := &sdk.EntryView{Key: []byte("k"), Value: []byte(c.merging), Version: 4, LastUpdateTime: 10, CreationTime: 5}
			var e *sdk.EntryView
			if c.existing != "" {
				e = &sdk.EntryView{Key: []byte("k"), Value: []byte(c.existing), Version: 7, LastUpdateTime: 20, CreationTime: 1}
			}
			r := Merge("docs", m, e)
			if r.Verdict != c.verdict {
				t.Fatalf("verdict %s (%s), want %s", r.Verdict, r.Reason, c.verdict)
			}
			if c.verdict != sdk.VerdictPut {
				return
			}
			if got := string(r.Entry.Value); got != c.want {
				t.Errorf("value %s, want %s", got, c.want)
			}
			if r.Entry.Version != 8 || r.Entry.LastUpdateTime != 20 || r.Entry.CreationTime != 1 || string(r.Entry.Key) != "k" {
				t.Errorf("metadata %+v", r.Entry)
			}
			if r.Entry.Cost != int64(1+len(c.want)) {
				t.Errorf("cost %d", r.Entry.Cost)
			}
		})
	}
}
