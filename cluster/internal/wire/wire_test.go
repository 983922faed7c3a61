package wire

import (
	"errors"
	"testing"
	"unsafe"
)

func TestStrAs(t *testing.T) {
	prev := string([]byte("merge")) // not a constant: its bytes are its own
	for _, tc := range []struct {
		name, in string
		max      int
		want     string
		same     bool // the result is prev itself
		fails    bool
	}{
		{name: "equal", in: "merge", max: 10, want: "merge", same: true},
		{name: "different", in: "other", max: 10, want: "other"},
		{name: "prefix of prev", in: "mer", max: 10, want: "mer"},
		{name: "empty", in: "", max: 10, want: ""},
		{name: "too long", in: "merge", max: 4, fails: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReader(append(AppendStr(nil, tc.in), 7))
			got := r.StrAs(tc.max, prev)
			if tc.fails {
				if !errors.Is(r.Err(), ErrMalformed) || got != "" {
					t.Fatalf("got %q, %v; want a malformed error", got, r.Err())
				}
				return
			}
			if r.Err() != nil || got != tc.want || r.Byte() != 7 {
				t.Fatalf("got %q, %v; want %q and the next byte", got, r.Err(), tc.want)
			}
			if same := len(got) > 0 && unsafe.StringData(got) == unsafe.StringData(prev); same != tc.same {
				t.Fatalf("shares prev's bytes: %v, want %v", same, tc.same)
			}
		})
	}
	r := NewReader([]byte{5, 'a'}) // length beyond the message
	if r.StrAs(10, prev); r.Err() == nil {
		t.Fatal("truncated string read")
	}
}
