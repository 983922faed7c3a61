package metrics

import (
	"errors"
	"io"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
)

// gather registers m alone and returns series -> value, keyed by metric
// name and label values in label-name order ("mendmq_messages_total/in/1").
func gather(t *testing.T, m *MQTT) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(m); err != nil {
		t.Fatalf("register: %v", err)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		for _, s := range f.GetMetric() {
			key := f.GetName()
			for _, l := range s.GetLabel() {
				key += "/" + l.GetValue()
			}
			out[key] = value(f.GetType(), s)
		}
	}
	return out
}

func value(typ dto.MetricType, m *dto.Metric) float64 {
	switch typ {
	case dto.MetricType_COUNTER:
		return m.GetCounter().GetValue()
	case dto.MetricType_GAUGE:
		return m.GetGauge().GetValue()
	}
	return m.GetUntyped().GetValue()
}

func publish(qos byte) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, TopicName: "t"}
}

func TestMessageCounters(t *testing.T) {
	m := New(new(system.Info))
	cl := &mqtt.Client{}
	for _, pk := range []packets.Packet{publish(0), publish(1), publish(1), publish(2), {FixedHeader: packets.FixedHeader{Type: packets.Subscribe}}} {
		if _, err := m.OnPacketRead(cl, pk); err != nil {
			t.Fatalf("OnPacketRead: %v", err)
		}
	}
	for _, pk := range []packets.Packet{publish(0), publish(0), publish(0), publish(2), {FixedHeader: packets.FixedHeader{Type: packets.Puback}}} {
		m.OnPacketSent(cl, pk, nil)
	}
	got := gather(t, m)
	for key, want := range map[string]float64{
		"mendmq_messages_total/in/0":  1,
		"mendmq_messages_total/in/1":  2,
		"mendmq_messages_total/in/2":  1,
		"mendmq_messages_total/out/0": 3,
		"mendmq_messages_total/out/1": 0,
		"mendmq_messages_total/out/2": 1,
	} {
		if got[key] != want {
			t.Errorf("%s = %v, want %v", key, got[key], want)
		}
	}
}

func TestOnPacketReadPassesPacketThrough(t *testing.T) {
	m := New(new(system.Info))
	in := publish(1)
	in.Payload = []byte("payload")
	out, err := m.OnPacketRead(&mqtt.Client{}, in)
	if err != nil || string(out.Payload) != "payload" || out.TopicName != "t" {
		t.Errorf("OnPacketRead changed the packet: %+v, %v", out, err)
	}
}

func TestDropsAndRefusals(t *testing.T) {
	m := New(new(system.Info))
	cl := &mqtt.Client{}
	m.OnPublishDropped(cl, publish(0))
	m.OnPublishDropped(cl, publish(0))
	m.OnQosDropped(cl, publish(1))
	m.OnQosDropped(cl, packets.Packet{PacketID: 7}) // mochi's second call for an expired message
	m.OnDisconnect(cl, packets.ErrPacketTooLarge, false)
	m.OnDisconnect(cl, errors.Join(errors.New("read"), packets.ErrPacketTooLarge), true)
	m.OnDisconnect(cl, io.EOF, false)
	m.OnDisconnect(cl, nil, true)
	m.OnDisconnect(cl, packets.ErrKeepAliveTimeout, false)
	m.Dropped(ReasonNetsplit)
	m.Refused("connect_rate")
	m.Refused("connect_rate")
	m.Refused("max_connections")
	got := gather(t, m)
	for key, want := range map[string]float64{
		"mendmq_messages_dropped_total/" + ReasonQueueFull:     2,
		"mendmq_messages_dropped_total/" + ReasonInflightLimit: 1,
		"mendmq_messages_dropped_total/" + ReasonPacketTooBig:  2,
		"mendmq_messages_dropped_total/" + ReasonNetsplit:      1,
		"mendmq_connections_refused_total/connect_rate":        2,
		"mendmq_connections_refused_total/max_connections":     1,
	} {
		if got[key] != want {
			t.Errorf("%s = %v, want %v", key, got[key], want)
		}
	}
	if v, ok := got["mendmq_messages_dropped_total/"+ReasonNotAuthorized]; ok {
		t.Errorf("not_authorized drops = %v, want no series", v)
	}
}

func TestInfoGauges(t *testing.T) {
	info := &system.Info{
		ClientsConnected: 3, ClientsTotal: 5, BytesReceived: 100, BytesSent: 200,
		Subscriptions: 7, Retained: 2, Inflight: 4, Uptime: 60,
	}
	got := gather(t, New(info))
	for key, want := range map[string]float64{
		"mendmq_clients_connected": 3,
		"mendmq_clients_known":     5,
		"mendmq_bytes_total/in":    100,
		"mendmq_bytes_total/out":   200,
		"mendmq_subscriptions":     7,
		"mendmq_retained_messages": 2,
		"mendmq_inflight_messages": 4,
		"mendmq_uptime_seconds":    60,
	} {
		if g, ok := got[key]; !ok || g != want {
			t.Errorf("%s = %v (present %v), want %v", key, g, ok, want)
		}
	}
}

func TestProvides(t *testing.T) {
	m := New(new(system.Info))
	want := map[byte]bool{mqtt.OnPacketRead: true, mqtt.OnPacketSent: true, mqtt.OnPublishDropped: true, mqtt.OnQosDropped: true, mqtt.OnDisconnect: true}
	for b := byte(0); b <= mqtt.StoredSysInfo; b++ {
		if m.Provides(b) != want[b] {
			t.Errorf("Provides(%d) = %v, want %v", b, m.Provides(b), want[b])
		}
	}
}

// TestLint runs Prometheus' metric naming and help checks over every
// series the hook exports.
func TestLint(t *testing.T) {
	m := New(new(system.Info))
	m.Dropped(ReasonQueueFull)
	m.Refused("connect_rate")
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	problems, err := promlint.NewWithMetricFamilies(mustGather(t, reg)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

func mustGather(t *testing.T, g prometheus.Gatherer) []*dto.MetricFamily {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return fams
}
