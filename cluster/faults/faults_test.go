package faults

import (
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func members(self string) *Switch {
	addrs := map[string]Addrs{
		"n1": {Gossip: "127.0.0.1:7001", Data: "127.0.0.1:8001"},
		"n2": {Gossip: "127.0.0.1:7002", Data: "127.0.0.1:8002"},
		"n3": {Gossip: "[::1]:7003", Data: "[::1]:8003"},
	}
	return New(self, func(n string) (Addrs, bool) { a, ok := addrs[n]; return a, ok })
}

func TestCutAndHeal(t *testing.T) {
	s := members("n1")
	var changed []string
	s.OnChange(func(p string) { changed = append(changed, p) })
	for _, tc := range []struct {
		names []string
		want  string
	}{
		{nil, "name at least one member"},
		{[]string{"n1"}, "that is this node"},
		{[]string{"n2", "nx"}, `"nx": not a member`},
	} {
		err := s.Cut(tc.names...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Cut(%v) = %v, want an error with %q", tc.names, err, tc.want)
		}
	}
	if s.Active() || len(s.Members()) != 0 || len(changed) != 0 {
		t.Fatalf("a refused Cut changed the switch: active %v members %v changed %v", s.Active(), s.Members(), changed)
	}
	if err := s.Refuse("n2"); err != nil {
		t.Fatalf("Refuse before any cut: %v", err)
	}
	if err := s.Cut("n3", "n2"); err != nil {
		t.Fatal(err)
	}
	if err := s.Cut("n2"); err != nil { // again: nothing changes
		t.Fatal(err)
	}
	slices.Sort(changed)
	if got := s.Members(); !slices.Equal(got, []string{"n2", "n3"}) || !slices.Equal(changed, got) || !s.Active() {
		t.Fatalf("members %v changed %v active %v", got, changed, s.Active())
	}
	if err := s.Refuse("n2"); !errors.Is(err, ErrCut) {
		t.Errorf("Refuse(n2) = %v, want ErrCut", err)
	}
	if err := s.Refuse("n4"); err != nil {
		t.Errorf("Refuse(n4) = %v", err)
	}
	changed = nil
	if got := s.Heal("n3", "n4"); !slices.Equal(got, []string{"n3"}) || !slices.Equal(changed, got) {
		t.Errorf("Heal(n3, n4) = %v, changed %v", got, changed)
	}
	if got := s.Heal(); !slices.Equal(got, []string{"n2"}) || s.Active() || s.Refuse("n2") != nil {
		t.Errorf("Heal() = %v, active %v", got, s.Active())
	}
}

// fakeTransport records what the wrapper lets through.
type fakeTransport struct {
	mu      sync.Mutex
	sent    []string
	dialed  []string
	packets chan *memberlist.Packet
	streams chan net.Conn
	// listeners, if set, stand for NetTransport's listener goroutines,
	// which Shutdown waits for.
	listeners *sync.WaitGroup
}

func newFake() *fakeTransport {
	return &fakeTransport{packets: make(chan *memberlist.Packet), streams: make(chan net.Conn)}
}

func (f *fakeTransport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	return net.IPv4(127, 0, 0, 1), 7001, nil
}
func (f *fakeTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return f.WriteToAddress(b, memberlist.Address{Addr: addr})
}
func (f *fakeTransport) WriteToAddress(_ []byte, a memberlist.Address) (time.Time, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = append(f.sent, a.Addr)
	return time.Now(), nil
}
func (f *fakeTransport) PacketCh() <-chan *memberlist.Packet { return f.packets }
func (f *fakeTransport) DialTimeout(addr string, d time.Duration) (net.Conn, error) {
	return f.DialAddressTimeout(memberlist.Address{Addr: addr}, d)
}
func (f *fakeTransport) DialAddressTimeout(a memberlist.Address, _ time.Duration) (net.Conn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dialed = append(f.dialed, a.Addr)
	c, _ := net.Pipe()
	return c, nil
}
func (f *fakeTransport) StreamCh() <-chan net.Conn { return f.streams }
func (f *fakeTransport) Shutdown() error {
	if f.listeners != nil {
		f.listeners.Wait()
	}
	return nil
}

func TestTransport(t *testing.T) {
	s := members("n1")
	f := newFake()
	tr := s.Transport(f)
	defer tr.Shutdown()
	udp := func(addr string) *memberlist.Packet {
		a, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		return &memberlist.Packet{Buf: []byte(addr), From: a}
	}
	// deliver feeds p and reports whether the wrapper passed it on.
	deliver := func(p *memberlist.Packet) bool {
		f.packets <- p
		// A marker packet from a member that is never cut follows: the
		// wrapper handles packets in order, so if the marker comes out
		// first, p was dropped.
		go func() { f.packets <- udp("127.0.0.9:9") }()
		got := <-tr.PacketCh()
		if string(got.Buf) == "127.0.0.9:9" {
			return false
		}
		<-tr.PacketCh() // the marker
		return true
	}
	if !deliver(udp("127.0.0.1:7002")) {
		t.Fatal("packet from n2 dropped before any cut")
	}
	if err := s.Cut("n2", "n3"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		from string
		pass bool
	}{
		{"127.0.0.1:7002", false}, // n2
		{"[::1]:7003", false},     // n3
		{"[::ffff:127.0.0.1]:7002", false},
		{"127.0.0.1:7001", true}, // n1's address, not cut
		{"127.0.0.1:7004", true}, // a port no cut member uses
	} {
		if got := deliver(udp(tc.from)); got != tc.pass {
			t.Errorf("packet from %s passed %v, want %v", tc.from, got, tc.pass)
		}
	}
	// Outbound: by name, and by address when memberlist knows no name
	// (a join to a seed address).
	for _, a := range []memberlist.Address{{Addr: "127.0.0.1:7002", Name: "n2"}, {Addr: "127.0.0.1:7002"}, {Addr: "[::1]:7003"}, {Addr: "10.0.0.1:1", Name: "n3"}} {
		if _, err := tr.WriteToAddress([]byte("x"), a); err != nil {
			t.Errorf("WriteToAddress(%v): %v", a, err)
		}
		if _, err := tr.DialAddressTimeout(a, time.Second); !errors.Is(err, ErrCut) {
			t.Errorf("DialAddressTimeout(%v) = %v, want ErrCut", a, err)
		}
	}
	if _, err := tr.WriteToAddress([]byte("x"), memberlist.Address{Addr: "127.0.0.1:7001", Name: "n1"}); err != nil {
		t.Fatal(err)
	}
	c, err := tr.DialTimeout("127.0.0.1:7009", time.Second)
	if err != nil {
		t.Fatalf("dial to a member not cut: %v", err)
	}
	c.Close()
	f.mu.Lock()
	if !slices.Equal(f.sent, []string{"127.0.0.1:7001"}) || !slices.Equal(f.dialed, []string{"127.0.0.1:7009"}) {
		t.Errorf("through to the inner transport: sent %v dialed %v", f.sent, f.dialed)
	}
	f.mu.Unlock()

	// Inbound streams are refused while anything is cut, passed after.
	a, b := net.Pipe()
	f.streams <- a
	_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := b.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("an inbound stream was not closed while a member is cut: read %v", err)
	}
	s.Heal()
	a, b = net.Pipe()
	defer b.Close()
	f.streams <- a
	if got := <-tr.StreamCh(); got != a {
		t.Error("the wrong stream came through")
	}
	a.Close()
	if !deliver(udp("127.0.0.1:7002")) {
		t.Error("packet from n2 dropped after the heal")
	}
}

// TestShutdownWithPacketsInFlight: memberlist stops reading before it
// shuts the transport down, and NetTransport's listeners block on an
// unbuffered send until someone reads; the wrapper must drain them so
// Shutdown returns (it hung a node's Stop for good before).
func TestShutdownWithPacketsInFlight(t *testing.T) {
	s := members("n1")
	f := newFake()
	f.listeners = &sync.WaitGroup{}
	tr := s.Transport(f)
	for range 3 { // one read by the forwarder, the others waiting behind it
		f.listeners.Add(2)
		go func() {
			defer f.listeners.Done()
			f.packets <- &memberlist.Packet{Buf: []byte("x")}
		}()
		go func() {
			defer f.listeners.Done()
			a, _ := net.Pipe()
			f.streams <- a
		}()
	}
	done := make(chan error, 1)
	go func() { done <- tr.Shutdown() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown hung with packets in flight and nobody reading")
	}
	if err := tr.Shutdown(); err != nil { // twice is fine
		t.Fatal(err)
	}
}
