package dataplane

import (
	"errors"
	"testing"
)

func TestMuxDispatch(t *testing.T) {
	m := NewMux()
	var frames []string
	if err := m.HandleFrameFunc(1, func(from string, p []byte) { frames = append(frames, from+":"+string(p)) }); err != nil {
		t.Fatal(err)
	}
	if err := m.HandleCallFunc(2, true, func(from string, p []byte) ([]byte, error) { return append([]byte("re:"), p...), nil }); err != nil {
		t.Fatal(err)
	}
	if err := m.HandleCallFunc(3, false, func(string, []byte) ([]byte, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	for _, typ := range []uint8{1, 2} {
		if m.HandleCallFunc(typ, false, nil) == nil || m.HandleFrameFunc(typ, nil) == nil {
			t.Fatalf("type %d registered twice", typ)
		}
	}
	m.HandleFrame("b", 1, []byte("x"))
	if got, err := m.HandleCall("b", 2, []byte("y")); err != nil || string(got) != "re:y" {
		t.Fatalf("call: %q %v", got, err)
	}
	if !m.InlineCall(2) || m.InlineCall(3) || m.InlineCall(9) {
		t.Fatal("inline flags")
	}
	m.HandleFrame("b", 9, nil)
	if _, err := m.HandleCall("b", 9, nil); !errors.Is(err, ErrUnknownType) || m.Unknown() != 2 {
		t.Fatalf("unknown type: %v, counted %d", err, m.Unknown())
	}
	refused := errors.New("refused")
	m.Guard = func(from string, typ uint8, call bool) error {
		if from == "x" {
			return refused
		}
		return nil
	}
	m.HandleFrame("x", 1, []byte("z"))
	if _, err := m.HandleCall("x", 2, nil); !errors.Is(err, refused) {
		t.Fatalf("guarded call: %v", err)
	}
	if len(frames) != 1 || frames[0] != "b:x" {
		t.Fatalf("frames %v", frames)
	}
}
