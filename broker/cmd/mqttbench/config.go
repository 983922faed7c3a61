package main

import (
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// RunConfig describes one load-generation run. Pair i connects its publisher to
// PubURLs[i % len(PubURLs)] and its subscriber to SubURLs[i % len(SubURLs)], and uses
// its own topic, so cross-node traffic is a matter of giving different URL lists.
type RunConfig struct {
	// PubURLs are the brokers publishers connect to (tcp://127.0.0.1:PORT; loopback only).
	PubURLs []string
	// SubURLs are the brokers subscribers connect to. Default: PubURLs.
	SubURLs []string
	// Pairs is the number of publisher/subscriber pairs, each on its own topic.
	// Default 50. More pairs spread load over more connections (and broker goroutines).
	Pairs int
	// QoS of publishes and subscriptions: 0, 1 or 2. Default 0.
	QoS byte
	// PayloadSize in bytes, at least 28 (the timestamp/sequence header). Default 64.
	PayloadSize int
	// Duration bounds the publishing phase. Default 5s, at most 1h.
	Duration time.Duration
	// Count is the number of messages per publisher; 0 means "until Duration".
	// Publishing stops at whichever of Count and Duration comes first.
	Count uint64
	// Rate limits each publisher to this many messages per second; 0 = unlimited.
	Rate float64
	// Version is the MQTT protocol version: 4 (3.1.1) or 5. Default 4.
	Version byte
	// Client selects the client implementation: "raw" (default, cheapest per
	// message, see raw.go) or "paho" (paho.mqtt.golang for 3.1.1, paho.golang for 5).
	Client string
	// Inflight is each publisher's window of unacknowledged QoS 1/2 messages.
	// Default 1: a publisher waits for each PUBACK/PUBCOMP before the next publish, so
	// throughput reflects the broker's round trip under load. Larger values measure
	// pipelined throughput; capped by the broker's v5 Receive Maximum.
	Inflight int
	// Window is end-to-end flow control: a publisher never has more than Window of
	// its messages published but not yet received by its subscriber (counted from the
	// highest sequence number received, so a lost message does not hold a slot).
	// Default 100. Without it a QoS 0 publisher writes as fast as the broker reads
	// (several times what it can deliver), queues build up, latency then measures the
	// queue and loss measures the broker's queue limit. 0 = no limit (flood). For
	// QoS 1/2 the outstanding messages are at most min(Inflight, Window).
	Window int
	// FlushEvery is how many publishes the raw client buffers per write (it always
	// flushes before it would block). Default 1: one write per message, like common
	// client libraries; larger values batch and lower both sides' syscall costs.
	FlushEvery int
	// ReceiveMaximum is the Receive Maximum property every MQTT 5 client sends in
	// CONNECT (how many unacknowledged QoS 1/2 messages it accepts). Default 65535;
	// 0 omits the property, which per the spec means the same 65535. (mochi v2.7.9
	// only runs its send-quota path, where it can deadlock, when the property is sent.)
	ReceiveMaximum int
	// Drain is how long to keep waiting for outstanding deliveries after publishing
	// stops, measured from the last progress. Default 1s.
	Drain time.Duration
	// MaxDrain caps the whole drain phase. Default 10s.
	MaxDrain time.Duration
	// ConnectTimeout bounds connecting and subscribing all clients. Default 20s.
	ConnectTimeout time.Duration
	// ProbeTimeout bounds the path check: before measuring, every pair's publisher
	// sends probe messages until its subscriber has seen one (in a cluster the
	// subscription must have reached the publisher's node). Default 10s.
	ProbeTimeout time.Duration
	// BrokerPIDs are processes whose CPU time over the measured phase is reported
	// (Linux /proc); empty = none.
	BrokerPIDs []int
	// ClientIDPrefix prefixes client ids and topics. Default "mqttbench".
	ClientIDPrefix string
}

// Limits that keep a run bounded in count and time.
const (
	maxPairs       = 10000
	maxPayload     = 1 << 20
	maxDuration    = time.Hour
	maxCount       = maxSeqTracked
	maxInflight    = 65535 - 1 // packet ids must not wrap onto an unacknowledged one
	maxFlushEvery  = 1024
	maxWaitSetting = 10 * time.Minute
)

// DefaultRunConfig returns the settings of the team's baseline scenario: 50 pairs,
// 64-byte payloads, QoS 0, 5 seconds, MQTT 3.1.1, raw client.
func DefaultRunConfig() RunConfig {
	return RunConfig{
		PubURLs:        []string{"tcp://127.0.0.1:1883"},
		Pairs:          50,
		QoS:            0,
		PayloadSize:    64,
		Duration:       5 * time.Second,
		Version:        4,
		Client:         clientRaw,
		Inflight:       1,
		Window:         100,
		ReceiveMaximum: 65535,
		FlushEvery:     1,
		Drain:          time.Second,
		MaxDrain:       10 * time.Second,
		ConnectTimeout: 20 * time.Second,
		ProbeTimeout:   10 * time.Second,
		ClientIDPrefix: "mqttbench",
	}
}

// Validate checks the config; each error names the flag and how to fix it.
func (c *RunConfig) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if len(c.PubURLs) == 0 {
		bad("-pub-url: at least one broker URL is required, e.g. tcp://127.0.0.1:1883")
	}
	for _, u := range append(append([]string(nil), c.PubURLs...), c.SubURLs...) {
		if _, err := brokerAddr(u); err != nil {
			bad("-pub-url/-sub-url: %w", err)
		}
	}
	if c.Pairs < 1 || c.Pairs > maxPairs {
		bad("-pairs: %d out of range, want 1..%d", c.Pairs, maxPairs)
	}
	if c.QoS > 2 {
		bad("-qos: %d, want 0, 1 or 2", c.QoS)
	}
	if c.PayloadSize < minPayloadSize || c.PayloadSize > maxPayload {
		bad("-payload: %d bytes, want %d..%d (the header carries timestamp and sequence)", c.PayloadSize, minPayloadSize, maxPayload)
	}
	if c.Duration <= 0 || c.Duration > maxDuration {
		bad("-duration: %s, want >0 and <= %s", c.Duration, maxDuration)
	}
	if c.Count > maxCount {
		bad("-count: %d, want <= %d per publisher", c.Count, maxCount)
	}
	if c.Rate < 0 {
		bad("-rate: %g, want >= 0 (0 = unlimited)", c.Rate)
	}
	if c.Version != 4 && c.Version != 5 {
		bad("-version: %d, want 4 (3.1.1) or 5", c.Version)
	}
	if c.Client != clientRaw && c.Client != clientPaho {
		bad("-client: %q, want %q or %q", c.Client, clientRaw, clientPaho)
	}
	if c.Inflight < 1 || c.Inflight > maxInflight {
		bad("-inflight: %d, want 1..%d", c.Inflight, maxInflight)
	}
	if c.Window < 0 || c.Window > maxSeqTracked {
		bad("-window: %d, want 0..%d (0 = unlimited)", c.Window, maxSeqTracked)
	}
	if c.ReceiveMaximum < 0 || c.ReceiveMaximum > 65535 {
		bad("-receive-max: %d, want 0..65535 (0 = omit the property)", c.ReceiveMaximum)
	}
	if c.FlushEvery < 1 || c.FlushEvery > maxFlushEvery {
		bad("-flush-every: %d, want 1..%d", c.FlushEvery, maxFlushEvery)
	}
	for name, d := range map[string]time.Duration{"-drain": c.Drain, "-max-drain": c.MaxDrain, "-connect-timeout": c.ConnectTimeout, "-probe-timeout": c.ProbeTimeout} {
		if d <= 0 || d > maxWaitSetting {
			bad("%s: %s, want >0 and <= %s", name, d, maxWaitSetting)
		}
	}
	if c.ClientIDPrefix == "" || strings.ContainsAny(c.ClientIDPrefix, "+#/") {
		bad("-prefix: %q, want a non-empty string without +, # or /", c.ClientIDPrefix)
	}
	return errors.Join(errs...)
}

// subURLs returns the subscriber URL list (PubURLs when unset).
func (c *RunConfig) subURLs() []string {
	if len(c.SubURLs) > 0 {
		return c.SubURLs
	}
	return c.PubURLs
}

// bindRunFlags registers the run flags on fs, writing into c (whose values are the defaults).
func bindRunFlags(fs *flag.FlagSet, c *RunConfig) {
	fs.Var((*urlList)(&c.PubURLs), "pub-url", "comma-separated broker URLs for publishers (pair i uses entry i mod n)")
	fs.Var((*urlList)(&c.SubURLs), "sub-url", "comma-separated broker URLs for subscribers (default: -pub-url)")
	fs.Var(urlBoth{c}, "url", "set both -pub-url and -sub-url")
	fs.IntVar(&c.Pairs, "pairs", c.Pairs, "publisher/subscriber pairs, one topic each")
	fs.Var((*byteFlag)(&c.QoS), "qos", "QoS 0, 1 or 2")
	fs.IntVar(&c.PayloadSize, "payload", c.PayloadSize, "payload size in bytes (>= 28)")
	fs.DurationVar(&c.Duration, "duration", c.Duration, "publishing time (upper bound also when -count is set)")
	fs.Uint64Var(&c.Count, "count", c.Count, "messages per publisher (0 = until -duration)")
	fs.Float64Var(&c.Rate, "rate", c.Rate, "messages/s per publisher (0 = unlimited)")
	fs.Var(versionFlag{&c.Version}, "version", "MQTT version: 3.1.1 (or 4) or 5")
	fs.StringVar(&c.Client, "client", c.Client, "client implementation: raw or paho")
	fs.IntVar(&c.Inflight, "inflight", c.Inflight, "unacknowledged QoS 1/2 messages per publisher")
	fs.IntVar(&c.Window, "window", c.Window, "max messages per pair published but not yet received (0 = unlimited)")
	fs.IntVar(&c.ReceiveMaximum, "receive-max", c.ReceiveMaximum, "MQTT 5: Receive Maximum sent in CONNECT (0 = omit)")
	fs.IntVar(&c.FlushEvery, "flush-every", c.FlushEvery, "raw client: publishes per write syscall")
	fs.DurationVar(&c.Drain, "drain", c.Drain, "after publishing, wait this long without progress for stragglers")
	fs.DurationVar(&c.MaxDrain, "max-drain", c.MaxDrain, "upper bound of the drain phase")
	fs.DurationVar(&c.ConnectTimeout, "connect-timeout", c.ConnectTimeout, "bound on connecting and subscribing all clients")
	fs.DurationVar(&c.ProbeTimeout, "probe-timeout", c.ProbeTimeout, "bound on the per-pair path check before measuring")
	fs.Var((*pidList)(&c.BrokerPIDs), "broker-pid", "comma-separated broker PIDs whose CPU use is reported")
	fs.StringVar(&c.ClientIDPrefix, "prefix", c.ClientIDPrefix, "client id and topic prefix")
}

// urlList is a comma-separated flag value; setting it replaces the default.
type urlList []string

func (u *urlList) String() string { return strings.Join(*u, ",") }
func (u *urlList) Set(s string) error {
	*u = nil
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*u = append(*u, p)
		}
	}
	return nil
}

// urlBoth sets publisher and subscriber URLs at once.
type urlBoth struct{ c *RunConfig }

func (u urlBoth) String() string { return "" }
func (u urlBoth) Set(s string) error {
	if err := (*urlList)(&u.c.PubURLs).Set(s); err != nil {
		return err
	}
	return (*urlList)(&u.c.SubURLs).Set(s)
}

type byteFlag byte

func (b *byteFlag) String() string { return strconv.Itoa(int(*b)) }
func (b *byteFlag) Set(s string) error {
	v, err := strconv.ParseUint(s, 10, 8)
	if err != nil {
		return err
	}
	*b = byteFlag(v)
	return nil
}

// versionFlag accepts "3.1.1", "4", "5" or "5.0".
type versionFlag struct{ v *byte }

func (f versionFlag) String() string {
	if f.v == nil {
		return ""
	}
	return strconv.Itoa(int(*f.v))
}
func (f versionFlag) Set(s string) error {
	switch s {
	case "3.1.1", "4", "311":
		*f.v = 4
	case "5", "5.0":
		*f.v = 5
	default:
		return fmt.Errorf("want 3.1.1 or 5")
	}
	return nil
}

type pidList []int

func (p *pidList) String() string {
	s := make([]string, len(*p))
	for i, v := range *p {
		s[i] = strconv.Itoa(v)
	}
	return strings.Join(s, ",")
}
func (p *pidList) Set(s string) error {
	*p = nil
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v <= 0 {
			return fmt.Errorf("pid %q: want a positive integer", f)
		}
		*p = append(*p, v)
	}
	return nil
}
