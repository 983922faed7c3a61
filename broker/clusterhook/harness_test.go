package clusterhook_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mendmq/mendmq/broker/clusterhook"
	"github.com/mendmq/mendmq/broker/metrics"
	"github.com/mendmq/mendmq/broker/quirks"
	"github.com/mendmq/mendmq/broker/refuse"
	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/cluster/routes"
)

// node is one mochi server with the cluster's hooks (in the broker's
// order, quirks included) attached to a fake cluster, for tests that drive
// the hooks directly.
type node struct {
	srv     *mqtt.Server
	addr    string
	hooks   *clusterhook.Hooks
	fake    *fakeCluster
	metrics *metrics.MQTT
}

// counter returns the value of the node's counter name with label=value.
func (n *node) counter(t *testing.T, name, label, value string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(n.metrics); err != nil {
		t.Fatalf("register metrics: %v", err)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// startNode runs the node; extra hooks go between quirks and the
// cluster's hooks. store, if not nil, is the storage hook the cluster
// hooks tell about sessions they move.
func startNode(t *testing.T, fake *fakeCluster, store clusterhook.Store, extra ...mqtt.Hook) *node {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: log})
	r := refuse.New(srv, refuse.Options{})
	q := quirks.New(srv, nil)
	m := metrics.New(srv.Info)
	h := clusterhook.New(clusterhook.Options{Server: srv, Metrics: m, Log: log,
		Refuse: r, Queue: q, Store: store})
	h.SetCluster(fake)
	all := append([]mqtt.Hook{r, new(allowAll), q}, extra...)
	for _, hk := range append(all, h.List()...) {
		if err := srv.AddHook(hk, nil); err != nil {
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
	return &node{srv: srv, addr: l.Address(), hooks: h, fake: fake, metrics: m}
}

func (n *node) url() string { return "tcp://" + n.addr }

// allowAll lets every client connect, publish and subscribe.
type allowAll struct{ mqtt.HookBase }

func (allowAll) ID() string { return "allow-all" }
func (allowAll) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}
func (allowAll) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (allowAll) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }

// fakeCluster is a one-node cluster named "n2": Register hands over the
// session set in it (taken from "n1"), shipments and forwards are
// recorded, everything else succeeds.
type fakeCluster struct {
	clusterhook.Cluster // nil: a method not overridden panics

	mu          sync.Mutex
	session     []byte // the export Register returns
	finish      []byte // what FinishTakeover returns
	registerErr error
	forwardErr  error
	split       bool // Split's answer
	appendErr   error
	forwarded   []uint64 // ids of Forward calls
	appended    [][]byte // AppendSession calls
}

func (f *fakeCluster) Name() string                                           { return "n2" }
func (f *fakeCluster) PutSession(string, routes.SessionRecord)                {}
func (f *fakeCluster) DeleteSession(string)                                   {}
func (f *fakeCluster) PutRetained(string, cluster.RetainedMessage, time.Time) {}
func (f *fakeCluster) DeleteRetained(string, time.Time)                       {}
func (f *fakeCluster) Synced() <-chan struct{}                                { return nil }
func (f *fakeCluster) SessionNode(string) (string, bool)                      { return "", false }
func (f *fakeCluster) SessionRecord(string) (routes.SessionRecord, bool) {
	return routes.SessionRecord{}, false
}
func (f *fakeCluster) Split() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.split
}
func (f *fakeCluster) PutSessionSync(context.Context, string, routes.SessionRecord) error { return nil }

func (f *fakeCluster) Register(context.Context, string, bool) (cluster.Takeover, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.registerErr != nil {
		return cluster.Takeover{}, f.registerErr
	}
	return cluster.Takeover{From: "n1", Session: f.session}, nil
}

func (f *fakeCluster) FinishTakeover(context.Context, string, string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.finish, nil
}

func (f *fakeCluster) AppendSession(_ context.Context, _, _ string, msgs []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.appendErr != nil {
		return f.appendErr
	}
	f.appended = append(f.appended, msgs)
	return nil
}

func (f *fakeCluster) Forward(_ context.Context, _ string, _ byte, id uint64, encode func() ([]byte, error)) error {
	if _, err := encode(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forwarded = append(f.forwarded, id)
	return f.forwardErr
}

// ForwardHold holds nothing (no peer is unreachable): it is Forward.
func (f *fakeCluster) ForwardHold(ctx context.Context, topic string, qos byte, id uint64, encode func() ([]byte, error)) error {
	return f.Forward(ctx, topic, qos, id, encode)
}

// wireMsg is a queued message in the session encoding moved between
// nodes (codec.go), written out here so the tests check the format too.
type wireMsg struct {
	T  byte   `json:"t"`
	ID uint16 `json:"id"`
	P  []byte `json:"p"`
	F  string `json:"f,omitempty"`
	I  uint64 `json:"i,omitempty"`
}

// publishMsg is a QoS 2 PUBLISH on topic t/x, with its origin key.
func publishMsg(t *testing.T, id uint16, payload string, from string, key uint64) wireMsg {
	t.Helper()
	b, err := clusterhook.EncodePublish(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2},
		TopicName: "t/x", Payload: []byte(payload)})
	if err != nil {
		t.Fatal(err)
	}
	return wireMsg{T: packets.Publish, ID: id, P: b, F: from, I: key}
}

// sessionBlob is an exported persistent v5 session subscribed to t/# with
// msgs queued (or, without subscriptions, messages handed over).
func sessionBlob(t *testing.T, subscribed bool, msgs ...wireMsg) []byte {
	t.Helper()
	s := map[string]any{"v": 5, "expiry": 300, "expiry_flag": true, "inflight": msgs}
	if subscribed {
		s["subs"] = []packets.Subscription{{Filter: "t/#", Qos: 2}}
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
