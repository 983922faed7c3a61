package dataplane

import (
	"errors"
	"fmt"
	"sync/atomic"
)

// FrameFunc handles a one-way frame of one type (see Handler.HandleFrame).
type FrameFunc func(from string, payload []byte)

// CallFunc handles a call of one type (see Handler.HandleCall).
type CallFunc func(from string, payload []byte) ([]byte, error)

// Mux is a Handler that dispatches each message type to the handler its
// owner registered, so that every part of a node (replication, routing,
// registration, the partitioned map) registers its own messages and no
// switch lists them all. Register everything before the Plane starts;
// registration is not safe for concurrent use with dispatch.
//
// Unknown types are counted (Unknown) and refused: a call gets an error
// answer, a frame is dropped.
type Mux struct {
	frames map[uint8]FrameFunc
	calls  map[uint8]CallFunc
	inline map[uint8]bool
	// Guard, if set, runs before every handler; a non-nil error drops
	// the frame or is the call's answer.
	Guard func(from string, typ uint8, call bool) error
	// OnLink, if set, receives the link changes (LinkObserver).
	OnLink func(peer string, up bool, err error)

	unknown atomic.Uint64
}

var (
	_ Handler      = (*Mux)(nil)
	_ InlineCaller = (*Mux)(nil)
	_ LinkObserver = (*Mux)(nil)
)

// ErrUnknownType answers a call of a type nothing registered.
var ErrUnknownType = errors.New("dataplane: unknown message type")

// NewMux returns an empty Mux.
func NewMux() *Mux {
	return &Mux{frames: map[uint8]FrameFunc{}, calls: map[uint8]CallFunc{}, inline: map[uint8]bool{}}
}

// HandleFrameFunc registers f for one-way frames of type typ. It fails if
// typ is taken (by a frame or a call).
func (m *Mux) HandleFrameFunc(typ uint8, f FrameFunc) error {
	if err := m.free(typ); err != nil {
		return err
	}
	m.frames[typ] = f
	return nil
}

// HandleCallFunc registers f for calls of type typ; inline runs them on
// the connection's reader (see InlineCaller). It fails if typ is taken.
func (m *Mux) HandleCallFunc(typ uint8, inline bool, f CallFunc) error {
	if err := m.free(typ); err != nil {
		return err
	}
	m.calls[typ] = f
	m.inline[typ] = inline
	return nil
}

func (m *Mux) free(typ uint8) error {
	_, f := m.frames[typ]
	_, c := m.calls[typ]
	if f || c {
		return fmt.Errorf("dataplane: message type %d is registered twice", typ)
	}
	return nil
}

// Unknown counts the messages of unregistered types received.
func (m *Mux) Unknown() uint64 { return m.unknown.Load() }

// HandleFrame implements Handler.
func (m *Mux) HandleFrame(from string, typ uint8, payload []byte) {
	if m.Guard != nil && m.Guard(from, typ, false) != nil {
		return
	}
	f, ok := m.frames[typ]
	if !ok {
		m.unknown.Add(1)
		return
	}
	f(from, payload)
}

// HandleCall implements Handler.
func (m *Mux) HandleCall(from string, typ uint8, payload []byte) ([]byte, error) {
	if m.Guard != nil {
		if err := m.Guard(from, typ, true); err != nil {
			return nil, err
		}
	}
	f, ok := m.calls[typ]
	if !ok {
		m.unknown.Add(1)
		return nil, fmt.Errorf("%w %d", ErrUnknownType, typ)
	}
	return f(from, payload)
}

// InlineCall implements InlineCaller.
func (m *Mux) InlineCall(typ uint8) bool { return m.inline[typ] }

// LinkChanged implements LinkObserver.
func (m *Mux) LinkChanged(peer string, up bool, err error) {
	if m.OnLink != nil {
		m.OnLink(peer, up, err)
	}
}
