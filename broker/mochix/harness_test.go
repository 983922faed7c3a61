package mochix_test

import (
	"bytes"
	"io"
	"log/slog"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// startServer runs a bare mochi server with hooks and one TCP listener
// on 127.0.0.1, closed at cleanup.
func startServer(t *testing.T, hooks ...mqtt.Hook) (*mqtt.Server, string) {
	t.Helper()
	return startServerWith(t, nil, hooks...)
}

// startServerWith is startServer with capabilities caps (nil: mochi's
// defaults).
func startServerWith(t *testing.T, caps *mqtt.Capabilities, hooks ...mqtt.Hook) (*mqtt.Server, string) {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Capabilities: caps, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := srv.AddHook(new(allowAll), nil); err != nil {
		t.Fatal(err)
	}
	for _, h := range hooks {
		if err := srv.AddHook(h, nil); err != nil {
			t.Fatal(err)
		}
	}
	l := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"})
	if err := srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv, l.Address()
}

// recorder is a hook that hands events to a test.
type recorder struct {
	mqtt.HookBase
	provides     []byte
	onPublish    func(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error)
	onQosPublish func(cl *mqtt.Client, pk packets.Packet)
	onEncode     func(cl *mqtt.Client, pk packets.Packet) packets.Packet
	onSelect     func(subs *mqtt.Subscribers, pk packets.Packet) *mqtt.Subscribers
	onConnect    func(cl *mqtt.Client, pk packets.Packet) error
	onDropped    func(cl *mqtt.Client, pk packets.Packet)
	onWill       func(cl *mqtt.Client, w mqtt.Will) (mqtt.Will, error)
	onRetain     func(cl *mqtt.Client, pk packets.Packet)
	established  func(cl *mqtt.Client)
	onProcessed  func(cl *mqtt.Client, pk packets.Packet)
}

func (r *recorder) ID() string { return "recorder" }
func (r *recorder) Provides(b byte) bool {
	return bytes.IndexByte(r.provides, b) >= 0
}
func (r *recorder) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if r.onPublish == nil {
		return pk, nil
	}
	return r.onPublish(cl, pk)
}
func (r *recorder) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	if r.onQosPublish != nil {
		r.onQosPublish(cl, pk)
	}
}
func (r *recorder) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if r.onEncode == nil {
		return pk
	}
	return r.onEncode(cl, pk)
}
func (r *recorder) OnSelectSubscribers(subs *mqtt.Subscribers, pk packets.Packet) *mqtt.Subscribers {
	if r.onSelect == nil {
		return subs
	}
	return r.onSelect(subs, pk)
}
func (r *recorder) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if r.onConnect == nil {
		return nil
	}
	return r.onConnect(cl, pk)
}
func (r *recorder) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if r.onDropped != nil {
		r.onDropped(cl, pk)
	}
}
func (r *recorder) OnWill(cl *mqtt.Client, w mqtt.Will) (mqtt.Will, error) {
	if r.onWill == nil {
		return w, nil
	}
	return r.onWill(cl, w)
}
func (r *recorder) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, n int64) {
	if r.onRetain != nil {
		r.onRetain(cl, pk)
	}
}
func (r *recorder) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if r.established != nil {
		r.established(cl)
	}
}

func (r *recorder) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, err error) {
	if r.onProcessed != nil {
		r.onProcessed(cl, pk)
	}
}

// allowAll lets every client connect, publish and subscribe.
type allowAll struct{ mqtt.HookBase }

func (allowAll) ID() string { return "allow-all" }
func (allowAll) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}
func (allowAll) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (allowAll) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }
