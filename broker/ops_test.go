package broker_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/mendmq/mendmq/broker"
	"github.com/mendmq/mendmq/broker/brokertest"
)

func TestAdminEndpoints(t *testing.T) {
	t.Parallel()
	n := brokertest.Start(t, brokertest.Config())
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := n.Get(path); code != http.StatusOK {
			t.Errorf("GET %s = %d %s, want 200", path, code, body)
		}
	}
	if code, _ := n.Get("/nope"); code != http.StatusNotFound {
		t.Errorf("GET /nope = %d, want 404", code)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	t.Parallel()
	n := brokertest.Start(t, brokertest.Config())
	url := n.URL(0)
	s := brokertest.MustV5(t, url, "sub")
	s.MustSub("m/t", 1)
	p := brokertest.MustV5(t, url, "pub")
	p.MustPub("m/t", 1, false, "hello")
	s.Next()

	want := map[string]float64{
		`mendmq_messages_total{direction="in",qos="1"}`:  1,
		`mendmq_messages_total{direction="out",qos="1"}`: 1,
		`mendmq_messages_total{direction="in",qos="0"}`:  0,
		`mendmq_messages_total{direction="out",qos="0"}`: 0,
		`mendmq_messages_total{direction="in",qos="2"}`:  0,
		`mendmq_clients_connected`:                       2,
		`mendmq_subscriptions`:                           1,
	}
	// The out counter moves when mochi has written the packet, which may
	// be just after the subscriber read it: poll the scrape.
	var got map[string]float64
	ok := brokertest.Poll(func() bool {
		code, body := n.Get("/metrics")
		if code != http.StatusOK {
			t.Fatalf("GET /metrics = %d", code)
		}
		var err error
		if got, err = brokertest.ParseMetrics(body); err != nil {
			t.Fatal(err)
		}
		for k, v := range want {
			if g, present := got[k]; !present || g != v {
				return false
			}
		}
		return true
	})
	if !ok {
		for k, v := range want {
			if g, present := got[k]; !present || g != v {
				t.Errorf("%s = %v (present %v), want %v", k, g, present, v)
			}
		}
		t.Logf("scraped: %q", brokertest.SeriesNames(got, "mendmq_"))
	}
	for _, name := range []string{"mendmq_bytes_total", "mendmq_uptime_seconds", "go_goroutines", "process_open_fds"} {
		if len(brokertest.SeriesNames(got, name)) == 0 {
			t.Errorf("/metrics has no %s", name)
		}
	}
}

// stopProbe is a mochi hook that, while the server stops, records what
// /readyz answers: readiness must drop before the admin server goes away.
type stopProbe struct {
	mqtt.HookBase
	url    func() string
	status atomic.Int64
}

func (h *stopProbe) ID() string           { return "readyz-probe" }
func (h *stopProbe) Provides(b byte) bool { return b == mqtt.OnStopped }

func (h *stopProbe) OnStopped() {
	code, _, _ := brokertest.HTTPGet(h.url())
	h.status.Store(int64(code))
}

func TestReadiness(t *testing.T) {
	t.Parallel()
	cfg := brokertest.Config()
	unstarted, err := broker.New(cfg, brokertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if unstarted.Ready() == nil {
		t.Error("Ready() = nil before Start")
	}

	probe := &stopProbe{}
	n := brokertest.Start(t, cfg, func(b *broker.Broker) error {
		probe.url = func() string { return "http://" + b.AdminAddr() + "/readyz" }
		return b.AddHook(probe, nil)
	})
	if code, _ := n.Get("/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz = %d after Start, want 200", code)
	}
	n.Stop()
	if got := probe.status.Load(); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz during shutdown = %d, want 503", got)
	}
	if n.Ready() == nil {
		t.Error("Ready() = nil after Shutdown")
	}
}

func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	n := brokertest.Start(t, brokertest.Config()) // connect_timeout 10s
	url := n.URL(0)
	c5 := brokertest.MustV5(t, url, "v5")
	c3 := brokertest.MustV3(t, url, "v3")
	// A connection that has not sent CONNECT yet must not hold shutdown
	// up until its connect_timeout.
	raw := brokertest.DialRaw(t, n.ListenerAddr(0))
	brokertest.Eventually(t, "two clients connected", func() bool { return n.Metric("mendmq_clients_connected") == 2 })

	ctx, cancel := context.WithTimeout(context.Background(), brokertest.Timeout)
	defer cancel()
	start := time.Now()
	if err := n.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Shutdown took %v with a connection waiting for CONNECT", took)
	}
	if d := c5.WaitServerDisconnect(); d.ReasonCode != v5ShuttingDown {
		t.Errorf("v5 DISCONNECT reason 0x%02x, want 0x8B server shutting down", d.ReasonCode)
	}
	c3.WaitLost()
	brokertest.WaitClosedByPeer(t, raw, time.Second)
	if _, err := brokertest.ConnectV5(t, url, "late", brokertest.V5Options{}); err == nil {
		t.Error("connected after Shutdown")
	} else if strings.Contains(err.Error(), "refused: CONNACK") {
		t.Errorf("after Shutdown got a CONNACK refusal, want no listener: %v", err)
	}
	if err := n.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
}
