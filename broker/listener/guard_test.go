package listener

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"

	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/config"
)

// fakeListener hands its connections to establish one after another, on
// the caller's goroutine, so every effect of the guard is visible when
// Serve returns.
type fakeListener struct {
	conns []net.Conn
	errs  []error // what the guarded establish returned, per connection
}

var _ listeners.Listener = (*fakeListener)(nil)

func (f *fakeListener) Init(*slog.Logger) error { return nil }
func (f *fakeListener) ID() string              { return "fake0" }
func (f *fakeListener) Address() string         { return "fake" }
func (f *fakeListener) Protocol() string        { return "fake" }
func (f *fakeListener) Close(listeners.CloseFn) {}
func (f *fakeListener) Serve(establish listeners.EstablishFn) {
	for _, c := range f.conns {
		f.errs = append(f.errs, establish(f.ID(), c))
	}
}

func pipes(t *testing.T, n int) []net.Conn {
	var out []net.Conn
	for range n {
		a, b := net.Pipe()
		t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
		out = append(out, a)
	}
	return out
}

func TestGuardCountsMochiRefusals(t *testing.T) {
	results := []error{
		packets.ErrServerBusy,
		packets.ErrBadUsernameOrPassword,
		packets.ErrBadUsernameOrPassword,
		packets.ErrKeepAliveTimeout, // an accepted client timing out later
		packets.ErrPacketTooLarge,
		io.EOF,
		nil,
		errors.New("read connection: i/o timeout"),
	}
	fake := &fakeListener{conns: pipes(t, len(results))}
	got := map[string]int{}
	l, err := Build(0, tcpConfig, Guard{Refused: func(r string) { got[r]++ }})
	if err != nil {
		t.Fatal(err)
	}
	g := l.(*guarded)
	g.Listener = fake
	i := 0
	g.Serve(func(string, net.Conn) error { i++; return results[i-1] })
	want := map[string]int{RefusedMaxConnections: 1, RefusedNotAuthorized: 2}
	if len(got) != len(want) || got[RefusedMaxConnections] != 1 || got[RefusedNotAuthorized] != 2 {
		t.Errorf("refusals counted %v, want %v", got, want)
	}
	for i, err := range fake.errs {
		if !errors.Is(err, results[i]) && err != results[i] {
			t.Errorf("connection %d: guard returned %v, want mochi's %v", i, err, results[i])
		}
	}
	if len(g.conns) != 0 {
		t.Errorf("%d connections still tracked after establish returned", len(g.conns))
	}
}

func TestGuardRateLimitBurst(t *testing.T) {
	const burst = 4
	fake := &fakeListener{conns: pipes(t, 10)}
	refused := 0
	l, err := Build(0, tcpConfig, Guard{RatePerSecond: burst, Refused: func(r string) {
		if r == RefusedConnectRate {
			refused++
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	g := l.(*guarded)
	g.Listener = fake
	served := 0
	g.Serve(func(string, net.Conn) error { served++; return nil })
	// Ten calls take microseconds; at 4/s the bucket does not refill.
	if served != burst || refused != 10-burst {
		t.Errorf("served %d, refused %d; want the burst %d served and %d refused", served, refused, burst, 10-burst)
	}
	for i, err := range fake.errs[burst:] {
		if !errors.Is(err, ErrRateLimited) {
			t.Errorf("connection %d: %v, want ErrRateLimited", burst+i, err)
		}
	}
}

func TestGuardRefusesAfterClose(t *testing.T) {
	fake := &fakeListener{conns: pipes(t, 1)}
	l, err := Build(0, tcpConfig, Guard{})
	if err != nil {
		t.Fatal(err)
	}
	g := l.(*guarded)
	g.Listener = fake
	g.Close(func(string) {})
	called := false
	g.Serve(func(string, net.Conn) error { called = true; return nil })
	if called || !errors.Is(fake.errs[0], ErrClosed) {
		t.Errorf("connection after Close: establish called %v, error %v; want not called, ErrClosed", called, fake.errs[0])
	}
	if _, err := fake.conns[0].Write([]byte{1}); err == nil {
		t.Error("connection accepted after Close is still open")
	}
}

// tcpConfig builds a real guarded TCP listener; Build does not bind (mochi
// binds in Init), and the tests swap in a fake.
var tcpConfig = config.ListenerConfig{Type: "tcp", Address: "127.0.0.1:0"}
