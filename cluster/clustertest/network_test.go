package clustertest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func TestLinkTable(t *testing.T) {
	n := New(t, Config{Seed: 1})
	type link struct{ a, b string }
	check := func(step string, want map[link]bool) {
		t.Helper()
		for l, up := range want {
			if got := n.Linked(l.a, l.b); got != up {
				t.Errorf("%s: Linked(%s, %s) = %v, want %v", step, l.a, l.b, got, up)
			}
			if got := n.Linked(l.b, l.a); got != up {
				t.Errorf("%s: Linked(%s, %s) = %v, want %v (links are symmetric)", step, l.b, l.a, got, up)
			}
		}
	}
	check("initial", map[link]bool{{"a", "b"}: true, {"a", "a"}: true})
	n.Cut("a", "b")
	check("cut", map[link]bool{{"a", "b"}: false, {"a", "c"}: true, {"b", "c"}: true})
	n.Heal()
	n.Isolate("c")
	check("isolate", map[link]bool{{"a", "b"}: true, {"a", "c"}: false, {"c", "new"}: false, {"c", "c"}: true})
	n.Heal()
	n.Partition([]string{"a", "b"}, []string{"c"}, []string{"d", "e"})
	check("partition", map[link]bool{
		{"a", "b"}: true, {"d", "e"}: true, {"a", "c"}: false, {"b", "d"}: false, {"c", "e"}: false, {"a", "x"}: true,
	})
	n.Heal()
	check("heal", map[link]bool{{"a", "c"}: true, {"b", "d"}: true})
}

func TestDataNetworkCut(t *testing.T) {
	n := New(t, Config{})
	a, b, c := n.DataNetwork("a"), n.DataNetwork("b"), n.DataNetwork("c")
	if _, err := b.Listen("0.0.0.0:0"); err == nil {
		t.Fatal("listening beyond 127.0.0.1 allowed")
	}
	ln, err := b.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if n.Owner(ln.Addr().String()) != "b" {
		t.Fatalf("owner of %s = %q", ln.Addr(), n.Owner(ln.Addr().String()))
	}
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- conn
		}
	}()
	ctx := context.Background()
	ab, err := a.Dial(ctx, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ba := <-accepted
	cb, err := c.Dial(ctx, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	bc := <-accepted

	n.Cut("a", "b")
	// The open a<->b stream is closed (b reads EOF); c<->b still works.
	_ = ba.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := ba.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("b reading the cut stream: %v, want EOF", err)
	}
	if _, err := ab.Write([]byte("x")); err == nil {
		t.Fatal("a wrote to a cut stream")
	}
	if _, err := a.Dial(ctx, ln.Addr().String()); !errors.Is(err, ErrLinkCut) {
		t.Fatalf("dial across cut = %v, want ErrLinkCut", err)
	}
	if _, err := cb.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	_ = bc.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(bc, buf); err != nil || buf[0] != 'y' {
		t.Fatalf("c->b after a<->b cut: %q, %v", buf, err)
	}

	// What was written but not read before a cut is lost with it.
	n.Heal()
	ab2, err := a.Dial(ctx, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ba2 := <-accepted
	if _, err := ab2.Write([]byte("unread")); err != nil {
		t.Fatal(err)
	}
	n.Cut("a", "b")
	_ = ba2.SetReadDeadline(time.Now().Add(2 * time.Second))
	if k, err := ba2.Read(make([]byte, 16)); k != 0 || err != io.EOF {
		t.Fatalf("b read %d bytes, %v after the cut; want the unread bytes lost and EOF", k, err)
	}

	n.Heal()
	again, err := a.Dial(ctx, ln.Addr().String())
	if err != nil {
		t.Fatalf("dial after heal: %v", err)
	}
	_ = again.Close()
	ln.Close()
	if n.Owner(ln.Addr().String()) != "" {
		t.Fatal("closed listener still owns its address")
	}
}

// recvPacket waits up to d for a packet on tr.
func recvPacket(tr *Transport, d time.Duration) (*memberlist.Packet, bool) {
	select {
	case p := <-tr.PacketCh():
		return p, true
	case <-time.After(d):
		return nil, false
	}
}

func TestTransportCut(t *testing.T) {
	n := New(t, Config{})
	var trs []*Transport
	for _, name := range []string{"a", "b", "c"} {
		tr, err := n.Transport(name)
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Shutdown()
		trs = append(trs, tr)
	}
	a, b, c := trs[0], trs[1], trs[2]
	if _, err := a.WriteTo([]byte("hello"), b.Addr()); err != nil {
		t.Fatal(err)
	}
	if p, ok := recvPacket(b, 2*time.Second); !ok || string(p.Buf) != "hello" {
		t.Fatalf("packet a->b before cut: %v %v", p, ok)
	}
	// A stream opened before the cut is closed by it.
	s, err := a.DialTimeout(b.Addr(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	srv := <-b.StreamCh()
	defer srv.Close()

	n.Cut("a", "b")
	if _, err := srv.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read on cut stream: %v, want EOF", err)
	}
	_ = s.Close()
	if _, err := a.WriteTo([]byte("lost"), b.Addr()); err != nil {
		t.Fatal(err) // dropped silently, like a network would
	}
	if _, err := b.WriteTo([]byte("lost too"), a.Addr()); err != nil {
		t.Fatal(err)
	}
	if _, err := a.DialTimeout(b.Addr(), time.Second); !errors.Is(err, ErrLinkCut) {
		t.Fatalf("dial across cut = %v, want ErrLinkCut", err)
	}
	// Traffic through the third node still flows: a->c and c->b.
	if _, err := a.WriteTo([]byte("via c"), c.Addr()); err != nil {
		t.Fatal(err)
	}
	if p, ok := recvPacket(c, 2*time.Second); !ok || string(p.Buf) != "via c" {
		t.Fatalf("packet a->c during a<->b cut: %v %v", p, ok)
	}
	if _, err := c.WriteTo([]byte("to b"), b.Addr()); err != nil {
		t.Fatal(err)
	}
	if p, ok := recvPacket(b, 2*time.Second); !ok || string(p.Buf) != "to b" {
		t.Fatalf("packet c->b: %v %v", p, ok)
	}
	if p, ok := recvPacket(b, 100*time.Millisecond); ok {
		t.Fatalf("b received %q across the cut", p.Buf)
	}
	if p, ok := recvPacket(a, 100*time.Millisecond); ok {
		t.Fatalf("a received %q across the cut", p.Buf)
	}
}

func TestSeededFaults(t *testing.T) {
	fates := func(seed uint64) []bool {
		n := New(t, Config{Seed: seed, DropRate: 0.5})
		out := make([]bool, 200)
		for i := range out {
			out[i], _ = n.packetFate()
		}
		return out
	}
	x, y, z := fates(42), fates(42), fates(43)
	same, drops := true, 0
	for i := range x {
		same = same && x[i] == y[i]
		if x[i] {
			drops++
		}
	}
	if !same {
		t.Fatal("the same seed gave different faults")
	}
	if drops < 60 || drops > 140 {
		t.Fatalf("%d of 200 packets dropped at rate 0.5", drops)
	}
	differ := false
	for i := range x {
		differ = differ || x[i] != z[i]
	}
	if !differ {
		t.Fatal("different seeds gave identical faults")
	}

	// Delayed packets still arrive, and not across a cut made meanwhile.
	n := New(t, Config{Seed: 7, MaxDelay: 50 * time.Millisecond})
	a, err := n.Transport("a")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown()
	b, err := n.Transport("b")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown()
	for range 5 {
		if _, err := a.WriteTo([]byte("late"), b.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		if _, ok := recvPacket(b, 2*time.Second); !ok {
			t.Fatalf("delayed packet %d never arrived", i)
		}
	}
	n.SetFaults(0, time.Second)
	if _, err := a.WriteTo([]byte("cut in flight"), b.Addr()); err != nil {
		t.Fatal(err)
	}
	n.Cut("a", "b")
	if p, ok := recvPacket(b, 1200*time.Millisecond); ok {
		t.Fatalf("packet %q crossed a link cut while it was delayed", p.Buf)
	}
}

// TestSilentCut checks Config.Silent: across a cut nothing arrives and
// nobody is told (writes succeed, reads time out, closes are unseen);
// dials fail; Heal closes the streams that lost something and keeps the
// idle ones.
func TestSilentCut(t *testing.T) {
	n := New(t, Config{Silent: true})
	a, b := n.DataNetwork("a"), n.DataNetwork("b")
	ln, err := b.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx := context.Background()
	dial := func() (ab, ba net.Conn) {
		t.Helper()
		ab, err := a.Dial(ctx, ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		ba, err = ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return ab, ba
	}
	timesOut := func(what string, c net.Conn) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		k, err := c.Read(make([]byte, 1))
		if !isTimeout(err) {
			t.Fatalf("%s: read %d bytes, %v; want a timeout", what, k, err)
		}
	}
	ab1, ba1 := dial() // loses bytes both ways, then b closes it
	ab2, ba2 := dial() // a closes it during the cut
	ab3, ba3 := dial() // idle during the cut

	n.Cut("a", "b")
	if k, err := ab1.Write([]byte("x")); k != 1 || err != nil {
		t.Fatalf("write across a silent cut: %d, %v; want 1, nil", k, err)
	}
	timesOut("b reading what a wrote across the cut", ba1)
	if _, err := ba1.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	timesOut("a reading what b wrote across the cut", ab1)
	_ = ba1.Close()
	timesOut("a reading after b closed across the cut", ab1)
	if err := ab2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := ab2.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after own close: %v, want net.ErrClosed", err)
	}
	timesOut("b reading after a closed across the cut", ba2)
	if _, err := a.Dial(ctx, ln.Addr().String()); !errors.Is(err, ErrLinkCut) {
		t.Fatalf("dial across a silent cut = %v, want ErrLinkCut", err)
	}

	// A read blocked without deadline on a stream whose peer's close was
	// lost returns when Heal closes the stream.
	_ = ab1.SetReadDeadline(time.Time{})
	readErr := make(chan error, 1)
	go func() {
		_, err := ab1.Read(make([]byte, 1))
		readErr <- err
	}()
	n.Heal()
	select {
	case err := <-readErr:
		if err == nil {
			t.Fatal("read on a stream with a gap succeeded after heal")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read on a stream that lost its peer's close still blocked after heal")
	}
	_ = ba2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := ba2.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("b reading the stream a closed during the cut, after heal: %v, want EOF", err)
	}
	if _, err := ab3.Write([]byte("z")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	_ = ba3.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(ba3, buf); err != nil || buf[0] != 'z' {
		t.Fatalf("idle stream after heal: %q, %v", buf, err)
	}
	_ = ab3.Close()
}

// TestCutAfter: the armed cut runs once the node has received the given
// bytes, counted both on streams it dialed (what it reads) and on streams
// dialed to it (what the dialer writes), and not before.
func TestCutAfter(t *testing.T) {
	n := New(t, Config{})
	a, b := n.DataNetwork("a"), n.DataNetwork("b")
	ln, err := b.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- conn
		}
	}()
	ab, err := a.Dial(context.Background(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer ab.Close()
	ba := <-accepted
	defer ba.Close()
	cuts := 0
	n.CutAfter("b", 10, func() { cuts++; n.Cut("a", "b") })
	for i, step := range []struct {
		write, read string // a writes to b; b writes, a reads
		linked      bool
	}{
		{"12345", "", true},     // 5 bytes to b
		{"", "xyzxyzxyz", true}, // to a: not counted
		{"6789", "", true},      // 9 to b
		{"0", "", false},        // 10: cut
	} {
		if step.write != "" {
			if _, err := ab.Write([]byte(step.write)); err != nil {
				t.Fatalf("step %d: write: %v", i, err)
			}
			buf := make([]byte, len(step.write))
			if _, err := io.ReadFull(ba, buf); err != nil && step.linked {
				t.Fatalf("step %d: b reads: %v", i, err)
			}
		}
		if step.read != "" {
			if _, err := ba.Write([]byte(step.read)); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(ab, make([]byte, len(step.read))); err != nil {
				t.Fatalf("step %d: a reads: %v", i, err)
			}
		}
		if got := n.Linked("a", "b"); got != step.linked {
			t.Fatalf("step %d: linked %v, want %v", i, got, step.linked)
		}
	}
	if cuts != 1 {
		t.Fatalf("cut ran %d times", cuts)
	}
	// A write across the mark is cut short at it.
	n.Heal()
	ab2, err := a.Dial(context.Background(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer ab2.Close()
	n.CutAfter("b", 3, func() { cuts++; n.Cut("a", "b") })
	if k, err := ab2.Write([]byte("12345")); k != 3 || err == nil || cuts != 2 {
		t.Fatalf("write across the mark: %d bytes, %v, %d cuts; want 3 bytes, an error, the cut", k, err, cuts)
	}
}

// TestCutAfterConcurrentStreams: streams writing to a node at once carry
// exactly the armed bytes between them before the cut, and the node reads
// no more than that (what was sent but not read is lost with the cut).
func TestCutAfterConcurrentStreams(t *testing.T) {
	const mark, streams = 100_000, 4
	n := New(t, Config{})
	b := n.DataNetwork("b")
	ln, err := b.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var (
		mu            sync.Mutex
		written, read int
		wg            sync.WaitGroup
	)
	wg.Add(1)
	go func() { // b reads every stream until it ends
		defer wg.Done()
		for range streams {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					k, err := c.Read(buf)
					mu.Lock()
					read += k
					mu.Unlock()
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	var conns []net.Conn
	for i := range streams {
		c, err := n.DataNetwork(fmt.Sprint("a", i)).Dial(context.Background(), ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	n.CutAfter("b", mark, func() { n.Isolate("b") })
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			chunk := make([]byte, 8192)
			for range 1000 { // far beyond the mark: the cut ends it
				k, err := c.Write(chunk)
				mu.Lock()
				written += k
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	if written != mark || read > mark {
		t.Fatalf("written %d, read %d; want exactly %d written and no more read", written, read, mark)
	}
	t.Logf("%d bytes written, %d read before the cut", written, read)
}
