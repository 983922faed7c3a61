package clustertests

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/cluster"
)

// Data-plane wire constants (cluster/dataplane: doc.go, handshake.go,
// frame.go), restated here because hostile input is written by hand.
const (
	dpFlagCall  = 0x01
	dpFlagReply = 0x02
	dpFlagError = 0x04

	// cluster/wire.go message types.
	typeDeltas   = 1
	typeForward  = 2
	callForward  = 10
	callDigest   = 11
	callRegister = 12
)

func dpString(b []byte, s string) []byte { return append(append(b, byte(len(s))), s...) }

// dpHello is a dialer's first handshake message.
func dpHello(cluster, from, to string, nonce [32]byte) []byte {
	b := append([]byte("MQDP"), 1)
	b = dpString(b, cluster)
	b = dpString(b, from)
	b = dpString(b, to)
	return append(b, nonce[:]...)
}

// dpProof is a handshake HMAC for a cluster whose secret key is secret.
func dpProof(secret, role, cluster, dialer, acceptor string, dn, an [32]byte) []byte {
	k := hmac.New(sha256.New, []byte(secret))
	k.Write([]byte("mendmq dataplane auth v1"))
	m := hmac.New(sha256.New, k.Sum(nil))
	var b []byte
	for _, s := range []string{role, cluster, dialer, acceptor} {
		b = dpString(b, s)
	}
	b = append(append(b, dn[:]...), an[:]...)
	m.Write(b)
	return m.Sum(nil)
}

// intruder is a data-plane connection from a process that is not a
// cluster member but knows the secret key (a compromised host, or a buggy
// member): the node must still survive what it sends.
type intruder struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
}

// dialIntruder completes the handshake with node (named name) at addr.
func dialIntruder(t testing.TB, addr, name string) *intruder {
	t.Helper()
	nc := brokertest.DialRaw(t, addr)
	_ = nc.SetDeadline(time.Now().Add(brokertest.Timeout))
	var dn [32]byte
	for i := range dn {
		dn[i] = byte(rand.IntN(256))
	}
	if _, err := nc.Write(dpHello("mendmq", "intruder", name, dn)); err != nil {
		t.Fatalf("send hello: %v", err)
	}
	br := bufio.NewReader(nc)
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(br, hdr); err != nil || string(hdr[:4]) != "MQDP" || hdr[4] != 0 {
		t.Fatalf("challenge header %q: %v", hdr, err)
	}
	l, _ := br.ReadByte()
	got := make([]byte, int(l)+64)
	if _, err := io.ReadFull(br, got); err != nil {
		t.Fatalf("read challenge: %v", err)
	}
	if string(got[:l]) != name {
		t.Fatalf("challenge from %q, want %q", got[:l], name)
	}
	an := [32]byte(got[l : l+32])
	if _, err := nc.Write(dpProof(cluster.LoopbackSecret, "dialer", "mendmq", "intruder", name, dn, an)); err != nil {
		t.Fatalf("send proof: %v", err)
	}
	if st, err := br.ReadByte(); err != nil || st != 0 {
		t.Fatalf("handshake result %d: %v", st, err)
	}
	if l, err := br.ReadByte(); err != nil || l != 0 {
		t.Fatalf("handshake result reason length %d: %v", l, err)
	}
	return &intruder{t: t, nc: nc, br: br}
}

func (in *intruder) frame(typ, flags byte, body []byte) {
	in.t.Helper()
	b := append([]byte{typ, flags}, binary.BigEndian.AppendUint32(nil, uint32(len(body)))...)
	if _, err := in.nc.Write(append(b, body...)); err != nil {
		in.t.Fatalf("write frame type %d: %v", typ, err)
	}
}

// call sends a call frame and returns the reply, which must be an error.
func (in *intruder) callErr(typ byte, id uint64, req []byte) string {
	in.t.Helper()
	in.frame(typ, dpFlagCall, append(binary.BigEndian.AppendUint64(nil, id), req...))
	for {
		hdr := make([]byte, 6)
		if _, err := io.ReadFull(in.br, hdr); err != nil {
			in.t.Fatalf("read reply to call %d: %v", typ, err)
		}
		body := make([]byte, binary.BigEndian.Uint32(hdr[2:]))
		if _, err := io.ReadFull(in.br, body); err != nil {
			in.t.Fatalf("read reply body: %v", err)
		}
		if hdr[1]&dpFlagReply == 0 {
			continue // keepalive
		}
		if got := binary.BigEndian.Uint64(body); got != id {
			in.t.Fatalf("reply to call %d, want %d", got, id)
		}
		if hdr[1]&dpFlagError == 0 {
			in.t.Fatalf("call type %d with garbage answered without an error: %q", typ, body[8:])
		}
		return string(body[8:])
	}
}

// waitEOF waits until the node closed the connection.
func waitEOF(t testing.TB, nc net.Conn) {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(brokertest.Timeout))
	buf := make([]byte, 512)
	for {
		_, err := nc.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("node did not close the connection from %s", nc.LocalAddr())
		}
		return
	}
}

// testBadInput: garbage on the data plane and the gossip port of n1
// from a non-member. Each kind of fault is counted in /metrics, the node
// stays up, and the cluster keeps routing.
func testBadInput(t *testing.T, c *testCluster) {
	const target = "n1"
	nd := c.node(target)
	addr := c.dataAddr(target)
	const bad = "mendmq_cluster_bad_messages_total"
	count := func(what string) float64 { return nd.Metric(bad, "what", what) }
	expect := func(what string, want float64) {
		t.Helper()
		if d, ok := pollFor(brokertest.Timeout, func() (bool, string) {
			got := count(what)
			return got == want, fmt.Sprint(got)
		}); !ok {
			t.Errorf("%s{what=%q} = %s, want %v", bad, what, d, want)
		}
	}
	hs, proto, msgs := count("handshake_failures"), count("protocol_errors"), count("bad_messages")
	rng := rand.New(rand.NewPCG(1, 2))
	garbage := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		return b
	}

	// Handshake failures: each connection is closed and counted.
	var zero [32]byte
	for _, tc := range []struct {
		name  string
		bytes []byte
	}{
		{"random bytes", garbage(300)},
		{"truncated hello", dpHello("mendmq", "intruder", target, zero)[:12]},
		{"another cluster", dpHello("other", "intruder", target, zero)},
		{"another node name", dpHello("mendmq", "intruder", "n9", zero)},
		{"member's own name", dpHello("mendmq", target, target, zero)},
		{"bad proof", append(dpHello("mendmq", "intruder", target, zero), garbage(32)...)},
		{"HTTP request", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
	} {
		nc := brokertest.DialRaw(t, addr)
		if _, err := nc.Write(tc.bytes); err != nil {
			t.Fatalf("%s: write: %v", tc.name, err)
		}
		if tc.name == "truncated hello" {
			_ = nc.(*net.TCPConn).CloseWrite()
		}
		waitEOF(t, nc)
		hs++
		expect("handshake_failures", hs)
	}

	// An authenticated non-member sending malformed application
	// messages: counted, answered with errors, connection kept.
	in := dialIntruder(t, addr, target)
	for _, f := range []struct {
		name string
		typ  byte
		body []byte
	}{
		{"garbage deltas", typeDeltas, garbage(100)},
		{"forward with 2^60 groups", typeForward, binary.AppendUvarint(nil, 1<<60)},
		{"unknown frame type", 77, garbage(10)},
	} {
		in.frame(f.typ, 0, f.body)
		msgs++
		expect("bad_messages", msgs)
	}
	// A well-framed forward whose publish is garbage: mochi's decoder
	// must not take the node down.
	// (No shared groups, no target list, then the publish.)
	in.frame(typeForward, 0, append([]byte{0, 0}, garbage(40)...))
	in.frame(typeForward, 0, []byte{0, 0, 0x30, 0x7f, 0x00, 0x05, 'a'}) // PUBLISH claiming 127 bytes
	if e := in.callErr(callRegister, 1, garbage(3)); e == "" {
		t.Error("register call with garbage: empty error")
	}
	msgs++
	expect("bad_messages", msgs)
	if e := in.callErr(callDigest, 2, garbage(50)); e == "" {
		t.Error("digest call with garbage: empty error")
	}
	msgs++
	if e := in.callErr(callForward, 3, binary.AppendUvarint(nil, 1<<40)); e == "" {
		t.Error("forward call with garbage: empty error")
	}
	msgs++
	expect("bad_messages", msgs)
	// Frame-level violations close the connection.
	in.frame(typeDeltas, 0x40, nil) // unknown flag
	waitEOF(t, in.nc)
	proto++
	expect("protocol_errors", proto)
	for _, raw := range [][]byte{
		{typeDeltas, 0, 0x7f, 0xff, 0xff, 0xff},              // oversize
		{typeDeltas, dpFlagCall | dpFlagReply, 0, 0, 0, 0},   // call and reply
		append([]byte{typeDeltas, 0, 0, 0, 0, 100}, 1, 2, 3), // truncated body
	} {
		in := dialIntruder(t, addr, target)
		if _, err := in.nc.Write(raw); err != nil {
			t.Fatal(err)
		}
		_ = in.nc.(*net.TCPConn).CloseWrite()
		waitEOF(t, in.nc)
		proto++
		expect("protocol_errors", proto)
	}

	// Gossip port: random UDP packets and a TCP stream of garbage.
	gossip := c.gossipAddr(target)
	u, err := net.Dial("udp", gossip)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		_, _ = u.Write(garbage(1 + i*20))
	}
	_ = u.Close()
	for range 3 {
		g := brokertest.DialRaw(t, gossip)
		_, _ = g.Write(garbage(2000))
		_ = g.(*net.TCPConn).CloseWrite()
		waitEOF(t, g)
	}

	// Exposed on /metrics, for operators.
	code, body := nd.Get("/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	series, err := brokertest.ParseMetrics(body)
	if err != nil {
		t.Fatal(err)
	}
	for what, want := range map[string]float64{"handshake_failures": hs, "protocol_errors": proto, "bad_messages": msgs} {
		key := fmt.Sprintf(`%s{what=%q}`, bad, what)
		if got, ok := series[key]; !ok || got != want {
			t.Errorf("/metrics %s = %v (present %v), want %v; have %v", key, got, ok, want, brokertest.SeriesNames(series, bad))
		}
	}

	// The intruder never became a member, and the cluster still routes
	// both ways through the node.
	for _, m := range nd.Cluster().Status().Members {
		if strings.Contains(m.Name, "intruder") {
			t.Errorf("non-member listed as member: %+v", m)
		}
	}
	c.waitFormed()
	subs := map[string]*brokertest.V5{}
	for _, n := range c.names {
		s := brokertest.MustV5(t, c.url(n), "bad-sub-"+n)
		s.MustSub("bad/#", 1)
		subs[n] = s
	}
	c.waitRoutes()
	for _, from := range []string{"n1", "n2"} {
		p := brokertest.MustV5(t, c.url(from), "bad-pub-"+from)
		p.MustPub("bad/x", 1, false, "after-"+from)
		p.MustPub("bad/m", 1, false, "marker")
		for n, s := range subs {
			expectOnce(t, from+" -> "+n, counts(s.Until("bad/m")), []string{"after-" + from})
		}
	}
}
