package membership

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func TestValidate(t *testing.T) {
	base := LoopbackConfig()
	base.NodeName = "n1"
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantKey string // "" = valid
	}{
		{"loopback ok", func(*Config) {}, ""},
		{"default ok", func(c *Config) { *c = DefaultConfig(); c.NodeName = "n1" }, ""},
		{"empty name", func(c *Config) { c.NodeName = "" }, "node.name"},
		{"name with space", func(c *Config) { c.NodeName = "a b" }, "node.name"},
		{"name too long", func(c *Config) { c.NodeName = strings.Repeat("x", 129) }, "node.name"},
		{"bind host name", func(c *Config) { c.BindAddr = "localhost:7946" }, "cluster.gossip_address"},
		{"bind no port", func(c *Config) { c.BindAddr = "127.0.0.1" }, "cluster.gossip_address"},
		{"bind ignored with transport", func(c *Config) { c.BindAddr = "bogus"; c.Transport = nopTransport{} }, ""},
		{"advertise needs ip", func(c *Config) { c.AdvertiseAddr = ":7946" }, "cluster.gossip_advertise_address"},
		{"seed host ok", func(c *Config) { c.Seeds = []string{"mendmq-headless.default.svc:7946", "10.0.0.1", "[::1]:7946"} }, ""},
		{"seed empty", func(c *Config) { c.Seeds = []string{""} }, "cluster.seeds"},
		{"seed bad port", func(c *Config) { c.Seeds = []string{"host:99999"} }, "cluster.seeds"},
		{"short secret", func(c *Config) { c.SecretKey = []byte("short") }, "cluster.secret_key"},
		{"passphrase ok", func(c *Config) { c.SecretKey = []byte("a long enough passphrase") }, ""},
		{"bad cluster name", func(c *Config) { c.ClusterName = "a/b" }, "cluster.name"},
		{"zero probe interval", func(c *Config) { c.ProbeInterval = 0 }, "cluster.probe_interval"},
		{"probe timeout >= interval", func(c *Config) { c.ProbeTimeout = c.ProbeInterval }, "cluster.probe_timeout"},
		{"suspicion mult", func(c *Config) { c.SuspicionMult = 0 }, "cluster.suspicion_mult"},
		{"negative push pull", func(c *Config) { c.PushPullInterval = -1 }, "cluster.push_pull_interval"},
		{"zero reconnect interval", func(c *Config) { c.ReconnectInterval = 0 }, "cluster.reconnect_interval"},
		{"negative reconnect timeout", func(c *Config) { c.ReconnectTimeout = -time.Second }, "cluster.reconnect_timeout"},
		{"meta too big", func(c *Config) { c.Meta.App = make([]byte, 500) }, "cluster.meta"},
		{"data addr too long", func(c *Config) { c.Meta.DataAddr = strings.Repeat("a", 256) }, "cluster.meta"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base
			tt.mutate(&c)
			err := c.Validate()
			if tt.wantKey == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tt.wantKey) {
				t.Fatalf("Validate() = %v, want error naming %s", err, tt.wantKey)
			}
		})
	}
}

func TestDeriveKey(t *testing.T) {
	for _, n := range []int{16, 24, 32} {
		k := bytes.Repeat([]byte{7}, n)
		if got := DeriveKey(k); !bytes.Equal(got, k) {
			t.Errorf("DeriveKey(%d bytes) changed a raw key", n)
		}
	}
	p := []byte("correct horse battery staple")
	got := DeriveKey(p)
	if len(got) != 32 || bytes.Equal(got[:len(p)%32], p[:len(p)%32]) {
		t.Errorf("DeriveKey(passphrase) = %x, want a 32-byte hash", got)
	}
	if !bytes.Equal(DeriveKey(p), got) {
		t.Error("DeriveKey is not deterministic")
	}
	if DeriveKey(nil) != nil {
		t.Error("DeriveKey(nil) != nil")
	}
}

func TestMetaRoundTrip(t *testing.T) {
	tests := []wireMeta{
		{},
		{cluster: "mendmq", NodeMeta: NodeMeta{DataAddr: "10.0.0.1:7947", Proto: 3}},
		{cluster: "c", flags: flagLeaving, NodeMeta: NodeMeta{App: []byte{0, 1, 2}}},
		{cluster: strings.Repeat("c", 64), NodeMeta: NodeMeta{DataAddr: strings.Repeat("d", 255), App: make([]byte, 100)}},
	}
	for _, w := range tests {
		b := encodeWireMeta(w)
		got, err := decodeMeta(b)
		if err != nil {
			t.Fatalf("decode(encode(%+v)): %v", w, err)
		}
		if got.cluster != w.cluster || got.flags != w.flags || !metaEqual(got.NodeMeta, w.NodeMeta) {
			t.Errorf("round trip: got %+v, want %+v", got, w)
		}
		// A future version appending fields stays readable.
		b[0] = 2
		if _, err := decodeMeta(append(b, 0xff, 0xee)); err != nil {
			t.Errorf("decode with trailing v2 fields: %v", err)
		}
	}
	for _, bad := range [][]byte{nil, {1}, {0, 0, 0, 0}, {1, 0, 0, 5, 'a'}, {1, 0, 0, 0, 3, 'x'}, {1, 0, 0, 0, 0, 0}} {
		if _, err := decodeMeta(bad); !errors.Is(err, errBadMeta) {
			t.Errorf("decodeMeta(%v) = %v, want errBadMeta", bad, err)
		}
	}
}

func FuzzDecodeLeavingNotice(f *testing.F) {
	f.Add(encodeLeavingNotice("n1"))
	f.Add([]byte{'L', 0})
	f.Add([]byte{'L', 5, 'a'})
	f.Fuzz(func(t *testing.T, b []byte) {
		name, err := decodeLeavingNotice(b)
		if err != nil {
			return
		}
		if got, err := decodeLeavingNotice(encodeLeavingNotice(name)); err != nil || got != name {
			t.Fatalf("round trip of %q: %q, %v", name, got, err)
		}
	})
}

func FuzzDecodeMeta(f *testing.F) {
	f.Add(encodeWireMeta(wireMeta{cluster: "mendmq", NodeMeta: NodeMeta{DataAddr: "127.0.0.1:7947", Proto: 1, App: []byte("x")}}))
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{1, 1, 1, 255})
	f.Fuzz(func(t *testing.T, b []byte) {
		w, err := decodeMeta(b)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes to a prefix-compatible form that
		// decodes to the same value.
		w2, err := decodeMeta(encodeWireMeta(w))
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if w2.cluster != w.cluster || w2.flags != w.flags || !metaEqual(w2.NodeMeta, w.NodeMeta) {
			t.Fatalf("re-decode mismatch: %+v vs %+v", w2, w)
		}
	})
}

func TestTableLifecycle(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tb := newTable("a")
	mem := func(name string) Member { return Member{Name: name, GossipAddr: "127.0.0.1:1"} }
	kinds := func(evs []event) []eventKind {
		var out []eventKind
		for _, e := range evs {
			out = append(out, e.kind)
		}
		return out
	}
	expect := func(step string, evs []event, want ...eventKind) {
		t.Helper()
		if got := kinds(evs); len(got) != len(want) || (len(want) > 0 && got[0] != want[0]) {
			t.Fatalf("%s: events %v, want %v", step, got, want)
		}
	}
	expect("self join", tb.alive(mem("a"), false, t0), evJoin)
	expect("b join", tb.alive(mem("b"), false, t0), evJoin)
	expect("b same again", tb.alive(mem("b"), false, t0))
	b2 := mem("b")
	b2.Meta.DataAddr = "x"
	expect("b meta", tb.alive(b2, false, t0), evUpdate)
	expect("b suspect", tb.suspect("b", true, t0), evUpdate)
	expect("b suspect twice", tb.suspect("b", true, t0))
	expect("self never suspect", tb.suspect("a", true, t0))
	expect("b cleared", tb.suspect("b", false, t0), evUpdate)
	expect("b dies", tb.gone(mem("b"), t0), evLeave)
	if m, _ := tb.lookup("b"); m.State != Dead {
		t.Fatalf("b state %v, want dead", m.State)
	}
	expect("b dies twice", tb.gone(mem("b"), t0))
	if tb.othersAlive() {
		t.Fatal("othersAlive with only b dead")
	}

	// Reconnect throttling: once per interval per member.
	iv := time.Second
	if due := tb.dueReconnects(t0, iv); len(due) != 1 || due[0].Name != "b" {
		t.Fatalf("first due = %v, want [b]", due)
	}
	if due := tb.dueReconnects(t0.Add(iv/2), iv); len(due) != 0 {
		t.Fatalf("due after half an interval = %v, want none", due)
	}
	if due := tb.dueReconnects(t0.Add(iv*95/100), iv); len(due) != 1 {
		t.Fatalf("due after ~an interval (jitter) = %v, want [b]", due)
	}

	expect("b back", tb.alive(mem("b"), false, t0), evJoin)
	if s := tb.stats(); s.Reconnects != 1 || s.Failures != 1 || s.Alive != 2 || s.Joins != 3 {
		t.Fatalf("stats %+v", s)
	}

	// A member announcing its leave is Left, never re-joined.
	expect("c join leaving", tb.alive(mem("c"), false, t0), evJoin)
	expect("c flags leave", tb.alive(mem("c"), true, t0))
	expect("c gone", tb.gone(mem("c"), t0), evLeave)
	if m, _ := tb.lookup("c"); m.State != Left {
		t.Fatalf("c state %v, want left", m.State)
	}
	if due := tb.dueReconnects(t0.Add(time.Hour), iv); len(due) != 0 {
		t.Fatalf("left member due for reconnect: %v", due)
	}

	// A direct leave notice ahead of the flag (gossip reordering) also
	// makes it Left, and a stale flagless update does not undo it.
	expect("e join", tb.alive(mem("e"), false, t0), evJoin)
	tb.leaving("e")
	expect("e stale update", tb.alive(mem("e"), false, t0))
	expect("e gone", tb.gone(mem("e"), t0), evLeave)
	if m, _ := tb.lookup("e"); m.State != Left {
		t.Fatalf("e state %v after a leave notice, want left", m.State)
	}
	tb.leaving("zz") // unknown: no record appears
	if _, ok := tb.lookup("zz"); ok {
		t.Fatal("leave notice for an unknown member created a record")
	}

	// A dead member another node saw leave becomes Left.
	expect("d join", tb.alive(mem("d"), false, t0), evJoin)
	expect("d dies", tb.gone(mem("d"), t0), evLeave)
	expect("d left per peer", tb.left("d", t0), evLeave)
	expect("alive b not left", tb.left("b", t0))

	// Forget and reap.
	if _, err := tb.forget("b"); !errors.Is(err, ErrMemberAlive) {
		t.Fatalf("forget alive = %v", err)
	}
	if _, err := tb.forget("zz"); !errors.Is(err, ErrUnknownMember) {
		t.Fatalf("forget unknown = %v", err)
	}
	evs, err := tb.forget("c")
	if err != nil {
		t.Fatal(err)
	}
	expect("forget c", evs, evRemove)
	expect("reap disabled", tb.reap(t0.Add(1000*time.Hour), 0))
	expect("reap early", tb.reap(t0.Add(time.Minute), time.Hour))
	expect("reap d and e", tb.reap(t0.Add(time.Hour), time.Hour), evRemove, evRemove)
	names := []string{}
	for _, m := range tb.members() {
		names = append(names, m.Name)
	}
	if strings.Join(names, ",") != "a,b" {
		t.Fatalf("members %v, want a,b", names)
	}
}

func TestEventQueueBounded(t *testing.T) {
	q := newEventQueue(2)
	if d := q.push(event{kind: evJoin}, event{kind: evJoin}, event{kind: evJoin}); d != 1 {
		t.Fatalf("dropped %d, want 1", d)
	}
	if got := len(q.take()); got != 2 {
		t.Fatalf("took %d, want 2", got)
	}
	if q.droppedCount() != 1 {
		t.Fatalf("droppedCount %d", q.droppedCount())
	}
}

func TestLogBridge(t *testing.T) {
	var buf bytes.Buffer
	var suspected []string
	b := &logBridge{
		log:       slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})),
		onSuspect: func(n string) { suspected = append(suspected, n) },
	}
	lines := []string{
		"[INFO] memberlist: Suspect node-2 has failed, no acks received\n",
		"[ERR] memberlist: Failed to send gossip to 1.2.3.4: boom\n",
		"[DEBUG] memberlist: Stream connection from=1.2.3.4\n",
		"no level at all\n",
	}
	for _, l := range lines {
		if n, err := b.Write([]byte(l)); err != nil || n != len(l) {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if len(suspected) != 1 || suspected[0] != "node-2" {
		t.Fatalf("suspected %v, want [node-2]", suspected)
	}
	out := buf.String()
	for _, want := range []string{"level=ERROR msg=\"Failed to send gossip", "level=DEBUG", "component=memberlist", "msg=\"no level at all\""} {
		if !strings.Contains(out, want) {
			t.Errorf("log output lacks %q:\n%s", want, out)
		}
	}
}

func TestResolveSeeds(t *testing.T) {
	cfg := LoopbackConfig()
	cfg.NodeName = "a"
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	self := "127.0.0.1:7000"
	m.localAddr.Store(&self)
	m.lookupIP = func(ctx context.Context, host string) ([]net.IPAddr, error) {
		switch host {
		case "svc.headless":
			return []net.IPAddr{{IP: net.ParseIP("10.0.0.1")}, {IP: net.ParseIP("10.0.0.2")}, {IP: net.ParseIP("127.0.0.1")}, {IP: net.ParseIP("fd00::1")}}, nil
		}
		return nil, errors.New("no such host")
	}
	got := m.resolve([]string{"svc.headless:7000", "missing.example:7000", "10.0.0.9", "10.0.0.1:7000"}, 7946)
	want := []string{"10.0.0.1:7000", "10.0.0.2:7000", "[fd00::1]:7000", "10.0.0.9:7946"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("resolve = %v, want %v", got, want)
	}
}

// nopTransport only satisfies the Transport field's type in Validate tests.
type nopTransport struct{ memberlist.Transport }

// TestFailedExchange: the failed members a join carries round-trip, and
// a receiving table adds only members it does not know, as Dead since
// they failed on the sender, re-joined and reaped as its own.
func TestFailedExchange(t *testing.T) {
	t0 := time.Unix(1000, 0)
	sender := newTable("a")
	sender.alive(Member{Name: "a"}, false, t0)
	sender.alive(Member{Name: "b", GossipAddr: "127.0.0.1:2", Meta: NodeMeta{DataAddr: "127.0.0.1:12", Proto: 4}}, false, t0)
	sender.alive(Member{Name: "c", GossipAddr: "127.0.0.1:3"}, false, t0)
	sender.alive(Member{Name: "d", GossipAddr: "127.0.0.1:4"}, false, t0)
	sender.alive(Member{Name: "e", GossipAddr: "127.0.0.1:5"}, false, t0)
	sender.alive(Member{Name: "f", GossipAddr: "127.0.0.1:6"}, false, t0) // alive, but the data plane cannot reach it
	sender.suspect("e", true, t0.Add(3*time.Second))
	sender.gone(Member{Name: "b", GossipAddr: "127.0.0.1:2", Meta: NodeMeta{DataAddr: "127.0.0.1:12", Proto: 4}}, t0.Add(time.Second))
	sender.gone(Member{Name: "c", GossipAddr: "127.0.0.1:3"}, t0.Add(2*time.Second))
	sender.leaving("d")
	sender.gone(Member{Name: "d"}, t0.Add(2*time.Second)) // left: not sent
	now := t0.Add(5 * time.Second)
	// Unreachable says so of f, of the sender itself and of d, which left:
	// only f is sent for it, as just failed.
	unreachable := func(name string) bool { return name == "f" || name == "a" || name == "d" }
	fs, err := decodeFailed(encodeFailed("mendmq", sender.failed(now, unreachable)))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]failedMember{}
	for _, f := range fs {
		got[f.m.Name] = f
	}
	if f, ok := got["f"]; !ok || f.age != 0 || f.m.GossipAddr != "127.0.0.1:6" {
		t.Fatalf("decoded %+v, want f, unreachable, as just failed", got)
	}
	delete(got, "f")
	if len(got) != 3 || got["e"].age != 2*time.Second || got["b"].age != 4*time.Second || got["c"].age != 3*time.Second || got["b"].cluster != "mendmq" ||
		got["b"].m.Meta.DataAddr != "127.0.0.1:12" || got["b"].m.Meta.Proto != 4 || got["b"].m.GossipAddr != "127.0.0.1:2" {
		t.Fatalf("decoded %+v", got)
	}

	recv := newTable("c")
	recv.alive(Member{Name: "c"}, false, now)
	recv.alive(Member{Name: "x"}, false, now)
	var evs []event
	for _, f := range fs {
		evs = append(evs, recv.learnFailed(f.m, now.Add(-f.age))...)
	}
	sort.Slice(evs, func(i, j int) bool { return evs[i].m.Name < evs[j].m.Name })
	if len(evs) != 3 || evs[0].kind != evLeave || evs[0].m.Name != "b" || evs[0].m.State != Dead || evs[1].m.Name != "e" || evs[1].m.State != Dead ||
		evs[2].m.Name != "f" || evs[2].m.State != Dead {
		t.Fatalf("learned %+v, want b, e and f failed (c is the receiver itself)", evs)
	}
	if evs := recv.learnFailed(Member{Name: "x"}, now); len(evs) != 0 {
		t.Fatalf("a known alive member became %+v", evs)
	}
	if due := recv.dueReconnects(now, time.Second); len(due) != 3 || due[0].Name != "b" || due[1].Name != "e" || due[2].Name != "f" {
		t.Fatalf("reconnects due %+v, want b, e and f", due)
	}
	// Failed 4 s before now on the sender: reaped 6 s later with a 10 s timeout.
	if evs := recv.reap(now.Add(5*time.Second), 10*time.Second); len(evs) != 0 {
		t.Fatalf("reaped early: %+v", evs)
	}
	if evs := recv.reap(now.Add(6*time.Second), 10*time.Second); len(evs) != 1 || evs[0].m.Name != "b" { // e failed 2 s ago
		t.Fatalf("reap %+v, want b", evs)
	}
	if b := encodeFailed("mendmq", nil); b != nil {
		t.Fatalf("an empty list encodes to %x", b)
	}
}

func FuzzDecodeFailed(f *testing.F) {
	f.Add(encodeFailed("mendmq", []failedMember{{m: Member{Name: "n3", GossipAddr: "127.0.0.1:7946", Meta: NodeMeta{DataAddr: "127.0.0.1:7947", Proto: 4}}, age: time.Second}}))
	f.Add([]byte{1, 1, 0})
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		fs, err := decodeFailed(b)
		if err != nil {
			return
		}
		for _, x := range fs {
			if x.m.Name == "" || x.m.State != Dead {
				t.Fatalf("decoded %+v", x)
			}
		}
	})
}
