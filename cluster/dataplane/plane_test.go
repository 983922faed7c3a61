package dataplane

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testHandler records one-way frames and answers calls with fn.
type testHandler struct {
	mu     sync.Mutex
	frames []recvFrame
	notify chan struct{} // capacity 1, signalled on every frame
	block  chan struct{} // if non-nil, HandleFrame waits on it
	call   func(from string, typ uint8, p []byte) ([]byte, error)
}

type recvFrame struct {
	from    string
	typ     uint8
	payload []byte
}

func newHandler() *testHandler { return &testHandler{notify: make(chan struct{}, 1)} }

func (h *testHandler) HandleFrame(from string, typ uint8, p []byte) {
	if h.block != nil {
		<-h.block
	}
	h.mu.Lock()
	h.frames = append(h.frames, recvFrame{from, typ, p})
	h.mu.Unlock()
	select {
	case h.notify <- struct{}{}:
	default:
	}
}

func (h *testHandler) HandleCall(from string, typ uint8, p []byte) ([]byte, error) {
	if h.call != nil {
		return h.call(from, typ, p)
	}
	return append([]byte("echo:"), p...), nil
}

func (h *testHandler) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.frames)
}

// waitFrames waits until h has received n frames.
func (h *testHandler) waitFrames(t testing.TB, n int, d time.Duration) {
	t.Helper()
	if err := h.waitFramesOK(n, d); err != nil {
		t.Fatal(err)
	}
}

func (h *testHandler) waitFramesOK(n int, d time.Duration) error {
	deadline := time.After(d)
	for h.count() < n {
		select {
		case <-h.notify:
		case <-deadline:
			return fmt.Errorf("received %d frames after %v, want %d", h.count(), d, n)
		}
	}
	return nil
}

func testLogger() *slog.Logger {
	if os.Getenv("MENDMQ_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

var testSecret = []byte("0123456789abcdef-test-secret")

func testConfig(name string) Config {
	c := LoopbackConfig()
	c.NodeName = name
	c.SecretKey = testSecret
	c.Logger = testLogger()
	return c
}

// startPlane starts a Plane; mutate may adjust its config.
func startPlane(t testing.TB, name string, h Handler, mutate func(*Config)) *Plane {
	t.Helper()
	cfg := testConfig(name)
	if mutate != nil {
		mutate(&cfg)
	}
	p, err := New(cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s", d, what)
}

func link(t testing.TB, from *Plane, to *Plane) {
	t.Helper()
	if err := from.SetPeer(to.cfg.NodeName, to.Addr().String()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 3*time.Second, from.cfg.NodeName+" reaching "+to.cfg.NodeName, func() bool { return from.Reachable(to.cfg.NodeName) })
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantKey string
	}{
		{"ok", func(*Config) {}, ""},
		{"default ok", func(c *Config) { n := c.NodeName; *c = DefaultConfig(); c.NodeName = n }, ""},
		{"no name", func(c *Config) { c.NodeName = "" }, "node.name"},
		{"bad addr", func(c *Config) { c.BindAddr = "nope" }, "cluster.data_address"},
		{"bad port", func(c *Config) { c.BindAddr = ":99999" }, "cluster.data_address"},
		{"short secret", func(c *Config) { c.SecretKey = []byte("x") }, "cluster.secret_key"},
		{"tiny frames", func(c *Config) { c.MaxFrameSize = 10 }, "cluster.data_max_frame_size"},
		{"huge frames", func(c *Config) { c.MaxFrameSize = 2 << 30 }, "cluster.data_max_frame_size"},
		{"no queue", func(c *Config) { c.QueueFrames = 0 }, "cluster.data_queue_frames"},
		{"idle vs keepalive", func(c *Config) { c.IdleTimeout = c.KeepaliveInterval }, "cluster.data_idle_timeout"},
		{"zero dial timeout", func(c *Config) { c.DialTimeout = 0 }, "cluster.data_dial_timeout"},
		{"backoff order", func(c *Config) { c.ReconnectMax = c.ReconnectMin / 2 }, "cluster.data_reconnect_max"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testConfig("a")
			tt.mutate(&c)
			err := c.Validate()
			if tt.wantKey == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tt.wantKey) {
				t.Fatalf("Validate() = %v, want error naming %s", err, tt.wantKey)
			}
		})
	}
}

func TestFramesInOrder(t *testing.T) {
	hb := newHandler()
	a := startPlane(t, "a", newHandler(), nil)
	b := startPlane(t, "b", hb, nil)
	link(t, a, b)
	const n = 20000
	ctx := context.Background()
	for i := range n {
		p := binary.BigEndian.AppendUint32(nil, uint32(i))
		if err := a.SendWait(ctx, "b", uint8(i%7), p); err != nil {
			t.Fatal(err)
		}
	}
	if hb.waitFramesOK(n, 20*time.Second) != nil {
		s, _ := a.PeerStats("b")
		t.Fatalf("received %d of %d frames; a->b stats %+v", hb.count(), n, s)
	}
	hb.mu.Lock()
	for i, f := range hb.frames {
		if f.from != "a" || f.typ != uint8(i%7) || binary.BigEndian.Uint32(f.payload) != uint32(i) {
			t.Fatalf("frame %d = %+v", i, f)
		}
	}
	hb.mu.Unlock()
	sa, _ := a.PeerStats("b")
	sb, _ := b.PeerStats("a")
	if sa.FramesSent != n || sb.FramesReceived != n || sa.BytesSent != sb.BytesReceived || sa.BytesSent != n*(headerLen+4) {
		t.Fatalf("stats a->b %+v, b<-a %+v", sa, sb)
	}
	if !sb.Inbound || sa.State != Connected {
		t.Fatalf("connection state a %v, b inbound %v", sa.State, sb.Inbound)
	}
}

// countingNetwork counts socket writes of dialed connections; dials
// wait until gate is closed.
type countingNetwork struct {
	TCPNetwork
	gate   chan struct{}
	writes atomic.Int64
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Write(b []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(b)
}

func (n *countingNetwork) Dial(ctx context.Context, addr string) (net.Conn, error) {
	<-n.gate
	c, err := n.TCPNetwork.Dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	return countingConn{c, &n.writes}, nil
}

func TestSmallFramesAreBatched(t *testing.T) {
	hb := newHandler()
	cn := &countingNetwork{gate: make(chan struct{})}
	a := startPlane(t, "a", newHandler(), func(c *Config) { c.Network = cn; c.KeepaliveInterval = time.Hour; c.IdleTimeout = 3 * time.Hour })
	b := startPlane(t, "b", hb, nil)
	// Queue while the first dial is held: one drain writes them all.
	if err := a.SetPeer("b", b.Addr().String()); err != nil {
		t.Fatal(err)
	}
	const n = 1000
	for i := range n {
		if err := a.Send("b", 1, []byte(fmt.Sprintf("msg-%04d", i))); err != nil {
			t.Fatal(err)
		}
	}
	close(cn.gate)
	hb.waitFrames(t, n, 5*time.Second)
	// Handshake writes (hello, proof) plus the frames: 1000 x 14 bytes
	// fit in one 64 KiB buffer, so one write.
	if w := cn.writes.Load(); w > 3 {
		t.Fatalf("%d socket writes for %d frames: not batched", w, n)
	}
}

func TestCall(t *testing.T) {
	hb := newHandler()
	release := make(chan struct{})
	hb.call = func(from string, typ uint8, p []byte) ([]byte, error) {
		switch typ {
		case 1:
			return append([]byte(from+":"), p...), nil
		case 2:
			return nil, errors.New("no such key")
		case 3:
			<-release
			return []byte("late"), nil
		}
		return nil, nil
	}
	a := startPlane(t, "a", newHandler(), nil)
	b := startPlane(t, "b", hb, nil)
	link(t, a, b)
	ctx := context.Background()

	got, err := a.Call(ctx, "b", 1, []byte("ping"))
	if err != nil || string(got) != "a:ping" {
		t.Fatalf("Call = %q, %v", got, err)
	}
	_, err = a.Call(ctx, "b", 2, nil)
	var re *RemoteError
	if !errors.As(err, &re) || re.Msg != "no such key" || re.Peer != "b" {
		t.Fatalf("Call remote error = %v", err)
	}
	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = a.Call(tctx, "b", 3, nil)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow Call = %v, want DeadlineExceeded", err)
	}
	close(release)

	// Many concurrent calls each get their own answer.
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := fmt.Sprint(i)
			got, err := a.Call(ctx, "b", 1, []byte(want))
			if err != nil || string(got) != "a:"+want {
				errs <- fmt.Errorf("call %d = %q, %v", i, got, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if _, err := a.Call(ctx, "nobody", 1, nil); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("Call unknown = %v", err)
	}
	if _, err := a.Call(ctx, "b", 1, make([]byte, a.cfg.MaxFrameSize)); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("Call oversize = %v", err)
	}
}

func TestCallFailsWhenConnectionLost(t *testing.T) {
	hb := newHandler()
	entered, release := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(release) })
	hb.call = func(string, uint8, []byte) ([]byte, error) {
		close(entered)
		<-release // answers only after the connection died
		return nil, nil
	}
	a := startPlane(t, "a", newHandler(), nil)
	b := startPlane(t, "b", hb, nil)
	link(t, a, b)
	errc := make(chan error, 1)
	go func() {
		_, err := a.Call(context.Background(), "b", 1, nil)
		errc <- err
	}()
	<-entered
	_ = b.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrConnLost) {
			t.Fatalf("Call = %v, want ErrConnLost", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Call did not fail after the connection was lost")
	}
}

func TestReconnectAfterPeerRestart(t *testing.T) {
	a := startPlane(t, "a", newHandler(), nil)
	hb := newHandler()
	b := startPlane(t, "b", hb, nil)
	addr := b.Addr().String()
	link(t, a, b)
	if err := a.Send("b", 1, []byte("one")); err != nil {
		t.Fatal(err)
	}
	hb.waitFrames(t, 1, 2*time.Second)
	_ = b.Close()
	waitUntil(t, 2*time.Second, "a noticing b is gone", func() bool { return !a.Reachable("b") })

	hb2 := newHandler()
	startPlane(t, "b", hb2, func(c *Config) { c.BindAddr = addr })
	waitUntil(t, 3*time.Second, "a reconnecting", func() bool { return a.Reachable("b") })
	if err := a.Send("b", 1, []byte("two")); err != nil {
		t.Fatal(err)
	}
	hb2.waitFrames(t, 1, 2*time.Second)
	if s, _ := a.PeerStats("b"); s.Dials < 2 || s.LastError == "" {
		t.Fatalf("stats %+v: want several dials and a recorded error", s)
	}
}

func TestAuthFailureRejected(t *testing.T) {
	a := startPlane(t, "a", newHandler(), nil)
	b := startPlane(t, "b", newHandler(), func(c *Config) { c.SecretKey = []byte("a different secret, 16+ bytes") })
	if err := a.SetPeer("b", b.Addr().String()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 3*time.Second, "handshake failures on both sides", func() bool {
		sa, _ := a.PeerStats("b")
		return sa.DialFailures > 0 && a.Stats().HandshakeFailures > 0 && b.Stats().HandshakeFailures > 0
	})
	if a.Reachable("b") {
		t.Fatal("a reached b with the wrong secret")
	}
	sa, _ := a.PeerStats("b")
	if !strings.Contains(sa.LastError, "authentication") {
		t.Fatalf("last error %q does not mention authentication", sa.LastError)
	}
	// Wrong cluster and wrong name are refused too.
	c := startPlane(t, "c", newHandler(), func(c *Config) { c.ClusterName = "other" })
	if err := a.SetPeer("c", c.Addr().String()); err != nil {
		t.Fatal(err)
	}
	if err := a.SetPeer("d", b.Addr().String()); err != nil { // b answers as "b", not "d"
		t.Fatal(err)
	}
	waitUntil(t, 3*time.Second, "refusals", func() bool {
		sc, _ := a.PeerStats("c")
		sd, _ := a.PeerStats("d")
		return strings.Contains(sc.LastError, "cluster") && strings.Contains(sd.LastError, "not \"d\"")
	})
	if a.Reachable("c") || a.Reachable("d") {
		t.Fatal("reached a peer of another cluster or under the wrong name")
	}
}

// rawAuthConn opens a connection to p and completes the handshake as
// node name, returning the socket for hand-made frames.
func rawAuthConn(t *testing.T, p *Plane, name string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	br := bufio.NewReader(c)
	if err := dialHandshake(br, c, authKey(testSecret), p.cfg.ClusterName, name, p.cfg.NodeName); err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Time{})
	return c
}

// waitClosed waits until the server closes c.
func waitClosed(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 256)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue // keepalives
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("connection still open")
		}
		return
	}
}

func TestBadInputRejectedAndCounted(t *testing.T) {
	hb := newHandler()
	b := startPlane(t, "b", hb, func(c *Config) { c.MaxFrameSize = 4096; c.HandshakeTimeout = 200 * time.Millisecond })
	hdr := func(typ, flags uint8, n uint32) []byte { return appendHeader(nil, typ, flags, int(n)) }
	tests := []struct {
		name  string
		auth  bool
		send  []byte
		close bool // half-close after sending (truncation)
		proto bool // counted as protocol error (else handshake failure)
	}{
		{"garbage before handshake", false, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), false, false},
		{"silent (slow loris)", false, nil, false, false},
		{"oversize frame", true, hdr(1, 0, 1<<20), false, true},
		{"unknown flags", true, hdr(1, 0x80, 0), false, true},
		{"call without id", true, hdr(1, flagCall, 3), false, true},
		{"reply on inbound", true, append(hdr(1, flagReply, 8), make([]byte, 8)...), false, true},
		{"unknown control", true, hdr(9, flagControl, 0), false, true},
		{"truncated body", true, append(hdr(1, 0, 100), "short"...), true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := b.Stats()
			var c net.Conn
			if tt.auth {
				c = rawAuthConn(t, b, "mallory")
			} else {
				var err error
				if c, err = net.Dial("tcp", b.Addr().String()); err != nil {
					t.Fatal(err)
				}
				defer c.Close()
			}
			if _, err := c.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			if tt.close {
				_ = c.(interface{ CloseWrite() error }).CloseWrite()
			}
			waitClosed(t, c)
			waitUntil(t, 2*time.Second, "counter", func() bool {
				after := b.Stats()
				if tt.proto {
					return after.ProtocolErrors == before.ProtocolErrors+1
				}
				return after.HandshakeFailures == before.HandshakeFailures+1
			})
		})
	}
	// b is still serving well-behaved peers.
	a := startPlane(t, "a", newHandler(), nil)
	link(t, a, b)
	if err := a.Send("b", 1, []byte("still here")); err != nil {
		t.Fatal(err)
	}
	hb.waitFrames(t, 1, 2*time.Second)
}

func TestIdleConnectionClosed(t *testing.T) {
	b := startPlane(t, "b", newHandler(), nil)
	c := rawAuthConn(t, b, "frozen")
	waitUntil(t, time.Second, "inbound registered", func() bool { s, ok := b.PeerStats("frozen"); return ok && s.Inbound })
	start := time.Now()
	waitClosed(t, c) // we never send keepalives
	if d := time.Since(start); d > 3*b.cfg.IdleTimeout {
		t.Fatalf("idle connection closed after %v, IdleTimeout %v", d, b.cfg.IdleTimeout)
	}
}

func TestSlowConsumerDoesNotStallOthers(t *testing.T) {
	slow := newHandler()
	slow.block = make(chan struct{})
	fast := newHandler()
	a := startPlane(t, "a", newHandler(), func(c *Config) { c.QueueFrames = 64; c.BufferSize = 4096 })
	b := startPlane(t, "b", slow, func(c *Config) { c.BufferSize = 4096 })
	c := startPlane(t, "c", fast, nil)
	link(t, a, b)
	link(t, a, c)
	defer close(slow.block)

	// b's handler is stuck: the TCP buffers fill, then a's queue for b
	// stays full (a momentary ErrQueueFull while the writer is busy does
	// not count).
	payload := make([]byte, 1024)
	fullFor := 0
	for i := 0; i < 200000 && fullFor < 50; i++ {
		switch err := a.Send("b", 1, payload); {
		case errors.Is(err, ErrQueueFull):
			fullFor++
			time.Sleep(time.Millisecond)
		case err != nil:
			t.Fatal(err)
		default:
			fullFor = 0
		}
	}
	if fullFor < 50 {
		t.Fatal("queue for a stuck peer never stayed full")
	}
	// c is unaffected.
	for i := range 1000 {
		if err := a.SendWait(context.Background(), "c", 1, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	fast.waitFrames(t, 1000, 3*time.Second)
	// SendWait to the stuck peer gives up with its context.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if err := a.SendWait(ctx, "b", 1, payload); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("SendWait to stuck peer = %v", err)
	}
	if s, _ := a.PeerStats("b"); s.QueueFull == 0 || s.QueueFrames != 64 {
		t.Fatalf("stats %+v", s)
	}
	// Keepalives from b's writer keep the connection up although its
	// reader is stuck.
	time.Sleep(2 * a.cfg.IdleTimeout)
	if !a.Reachable("b") {
		t.Fatal("a slow but live peer was disconnected")
	}
}

func TestBidirectionalAndRemovePeer(t *testing.T) {
	ha, hb := newHandler(), newHandler()
	a := startPlane(t, "a", ha, nil)
	b := startPlane(t, "b", hb, nil)
	// Both dial at once: each direction has its own connection.
	if err := a.SetPeer("b", b.Addr().String()); err != nil {
		t.Fatal(err)
	}
	if err := b.SetPeer("a", a.Addr().String()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 2*time.Second, "both directions", func() bool { return a.Reachable("b") && b.Reachable("a") })
	if err := a.Send("b", 1, []byte("hi b")); err != nil {
		t.Fatal(err)
	}
	if err := b.Send("a", 1, []byte("hi a")); err != nil {
		t.Fatal(err)
	}
	ha.waitFrames(t, 1, 2*time.Second)
	hb.waitFrames(t, 1, 2*time.Second)

	a.RemovePeer("b")
	if a.Reachable("b") {
		t.Fatal("reachable after RemovePeer")
	}
	if err := a.Send("b", 1, nil); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("Send after RemovePeer = %v", err)
	}
	if err := a.SetPeer("a", "127.0.0.1:1"); err == nil {
		t.Fatal("SetPeer(self) accepted")
	}
	if err := a.Send("b", 1, make([]byte, a.cfg.MaxFrameSize+1)); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversize Send = %v", err)
	}
	_ = a.Close()
	if err := a.Send("b", 1, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Send after Close = %v", err)
	}
}

func TestQueuedFramesDroppedWhenDialFails(t *testing.T) {
	a := startPlane(t, "a", newHandler(), nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // nobody listens: dials are refused
	if err := a.SetPeer("b", addr); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		_ = a.Send("b", 1, []byte("x"))
	}
	waitUntil(t, 2*time.Second, "drops counted", func() bool {
		s, _ := a.PeerStats("b")
		return s.Dropped > 0 && s.DialFailures > 0 && s.State == Disconnected && s.QueueFrames == 0
	})
}

func TestQueueBounds(t *testing.T) {
	q := newSendQueue(3, 10)
	for i, n := range []int{4, 4} {
		if err := q.tryPush(frame{payload: make([]byte, n)}); err != nil {
			t.Fatalf("push %d: %v", i, err)
		}
	}
	if err := q.tryPush(frame{payload: make([]byte, 4)}); err != ErrQueueFull {
		t.Fatalf("over byte bound: %v", err)
	}
	if err := q.tryPush(frame{payload: make([]byte, 2)}); err != nil {
		t.Fatal(err)
	}
	if err := q.tryPush(frame{}); err != ErrQueueFull {
		t.Fatalf("over frame bound: %v", err)
	}
	if got := q.takeAll(nil); len(got) != 3 {
		t.Fatalf("took %d", len(got))
	}
	// An oversized frame still fits an empty queue.
	if err := q.tryPush(frame{payload: make([]byte, 100)}); err != nil {
		t.Fatal(err)
	}
	// push waits for room.
	done := make(chan error, 1)
	go func() { done <- q.push(context.Background(), nil, frame{payload: []byte{1}}) }()
	select {
	case err := <-done:
		t.Fatalf("push did not wait: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	q.takeAll(nil)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	q.close()
	if err := q.tryPush(frame{}); err != ErrClosed {
		t.Fatalf("push after close: %v", err)
	}
}

func TestFrameRoundTrip(t *testing.T) {
	frames := []frame{
		{typ: 1, payload: []byte("hello")},
		{typ: 2},
		{typ: 3, flags: flagCall, id: 42, payload: []byte("req")},
		{typ: 3, flags: flagReply, id: 42},
		{typ: 3, flags: flagReply | flagError, id: 7, payload: []byte("boom")},
		{typ: ctlKeepalive, flags: flagControl},
	}
	var buf bytes.Buffer
	bw := bufio.NewWriter(&buf)
	for i := range frames {
		if _, err := writeFrame(bw, &frames[i]); err != nil {
			t.Fatal(err)
		}
	}
	_ = bw.Flush()
	fr := frameReader{r: bufio.NewReader(&buf), max: 1024}
	for i, want := range frames {
		got, err := fr.next()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if got.typ != want.typ || got.flags != want.flags || got.id != want.id || !bytes.Equal(got.payload, want.payload) {
			t.Fatalf("frame %d = %+v, want %+v", i, got, want)
		}
	}
	if _, err := fr.next(); err != io.EOF {
		t.Fatalf("end = %v, want EOF", err)
	}
}

// TestRefuseAndReset: a peer Config.Refuse names loses its links at
// Reset and cannot come back — neither by this side's dial nor by its
// own (the hello is rejected with the refusal's text); once Refuse lets
// it through, Reset brings the link back without waiting for the
// reconnect backoff (set long here, so only the reset can explain it).
func TestRefuseAndReset(t *testing.T) {
	var refuse atomic.Bool
	refuseB := func(peer string) error {
		if refuse.Load() && peer == "b" {
			return errors.New("cut for the test")
		}
		return nil
	}
	slow := func(c *Config) { c.ReconnectMin, c.ReconnectMax = 10*time.Second, 20*time.Second }
	a := startPlane(t, "a", newHandler(), func(c *Config) { slow(c); c.Refuse = refuseB })
	b := startPlane(t, "b", newHandler(), slow)
	link(t, a, b)
	link(t, b, a)

	refuse.Store(true)
	a.Reset("b")
	waitUntil(t, 3*time.Second, "both ends to lose the link", func() bool { return !a.Reachable("b") && !b.Reachable("a") })
	b.Reset("a") // b dials a at once: a must refuse the hello
	waitUntil(t, 3*time.Second, "b's refused dial", func() bool {
		s, _ := b.PeerStats("a")
		return strings.Contains(s.LastError, "cut for the test")
	})
	if a.Reachable("b") || b.Reachable("a") {
		t.Fatal("a refused peer got a link")
	}

	refuse.Store(false)
	a.Reset("b")
	waitUntil(t, 3*time.Second, "the link back after the reset", func() bool { return a.Reachable("b") })
}
