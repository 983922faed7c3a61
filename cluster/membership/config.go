package membership

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
)

// Config configures a Membership. Build it from DefaultConfig or
// LoopbackConfig, set NodeName, Seeds and SecretKey, then pass it to New,
// which validates it. The comment of each field names its config key.
type Config struct {
	// NodeName identifies this node in the cluster and must be unique in
	// it: a node whose name is used by a live member at another address
	// is refused (Start fails with ErrNameConflict). A restarted node may
	// reuse its name at a new address once its old instance is Dead or
	// Left. 1–128 bytes of letters, digits, '.', '-', '_'.
	// Key node.name. Default: the host name.
	NodeName string

	// BindAddr is the "host:port" memberlist listens on, UDP and TCP
	// alike. host must be an IP literal or empty (all interfaces).
	// Ignored when Transport is set. Key cluster.gossip_address.
	// Default ":7946".
	BindAddr string

	// AdvertiseAddr is the "ip:port" other members use to reach this node
	// (NAT, containers). Empty: the bound address, or a private
	// interface address when bound to all interfaces.
	// Key cluster.gossip_advertise_address. Default "".
	AdvertiseAddr string

	// Seeds are "host:port" addresses joined at Start; a missing port
	// means BindAddr's port. A host name resolves to all its A/AAAA
	// records (a Kubernetes headless service lists every pod), so one
	// seed may contact many nodes; this node's own address is skipped.
	// A seed that does not resolve is logged and skipped. While this node
	// has no other live member it re-joins the seeds every
	// ReconnectInterval, so nodes started in any order find each other.
	// Key cluster.seeds. Default none (a cluster of one until joined).
	Seeds []string

	// SecretKey enables memberlist's message encryption and
	// authentication (AES-GCM). 16, 24 or 32 bytes are used as an
	// AES-128/192/256 key, compatible with memberlist and serf keys; any
	// other length of at least 16 bytes is treated as a passphrase and
	// SHA-256 of it is the AES-256 key. Every member must use the same
	// value. The data plane derives its own HMAC key from the same secret.
	// Empty disables encryption (acceptable on a trusted network only).
	// Key cluster.secret_key. Default none.
	SecretKey []byte

	// ClusterName is carried in every member's metadata; members that
	// announce another cluster name are refused (Stats.RefusedJoins), so
	// two clusters sharing a network or a stale seed list never merge.
	// 0–64 bytes. Key cluster.name. Default "mendmq".
	ClusterName string

	// ProbeInterval is the time between failure-detector probes of one
	// random member (round robin). A probe gets ProbeInterval to complete,
	// including indirect probes through other members and a TCP fallback,
	// before its target is suspected. Lower detects failures sooner and
	// costs bandwidth: about (members-1) small UDP packets per interval
	// per node. Key cluster.probe_interval. Default 250ms (memberlist LAN:
	// 1s).
	ProbeInterval time.Duration

	// ProbeTimeout is how long a direct probe waits for an ack before
	// asking other members to probe indirectly. Set it to about the 99th
	// percentile RTT including scheduling delay; must be < ProbeInterval.
	// Key cluster.probe_timeout. Default 100ms (memberlist LAN: 500ms).
	ProbeTimeout time.Duration

	// SuspicionMult scales how long a suspected member has to refute
	// before it is declared dead:
	//
	//	SuspicionTimeout = SuspicionMult * max(1, log10(members)) * ProbeInterval
	//
	// shrinking towards that value as other members confirm the
	// suspicion, and at most 6 times it without confirmations. Higher
	// survives longer pauses of the suspect (GC, CPU throttling) at the
	// cost of slower detection. Key cluster.suspicion_mult. Default 4
	// (memberlist LAN: 4), i.e. 1s below 10 members.
	SuspicionMult int

	// GossipInterval is the time between gossip rounds that spread
	// membership changes to GossipNodes (3) random members; it bounds how
	// fast a state change propagates. Key cluster.gossip_interval.
	// Default 100ms (memberlist LAN: 200ms).
	GossipInterval time.Duration

	// PushPullInterval is the time between full state exchanges with one
	// random member over TCP (anti-entropy for membership). 0 disables
	// them, which is never advisable. Key cluster.push_pull_interval.
	// Default 15s (memberlist LAN: 30s).
	PushPullInterval time.Duration

	// StreamTimeout bounds memberlist TCP streams: dialing a member and
	// each read or write of a push/pull or join. Key
	// cluster.gossip_stream_timeout. Default 2s (memberlist LAN: 10s).
	StreamTimeout time.Duration

	// ReconnectInterval is how often a member that failed (not one that
	// left) is re-joined, throttled to one attempt per failed member per
	// interval, so a cluster split for longer than the suspicion timeout
	// re-forms by itself once the network heals (memberlist alone never
	// does). Also the retry interval for Seeds while alone.
	// Key cluster.reconnect_interval. Default 2s.
	ReconnectInterval time.Duration

	// ReconnectTimeout is how long a failed member is re-joined and kept
	// in Members as Dead, and a member that left kept as Left, before it
	// is forgotten (EventHandler.MemberRemove). 0 keeps them until
	// Forget. Key cluster.reconnect_timeout. Default 72h.
	ReconnectTimeout time.Duration

	// Meta is this node's metadata, sent to every member (see NodeMeta);
	// change it at run time with UpdateMeta. Its encoding, with
	// ClusterName, must fit in 512 bytes. Key cluster.meta (set by the
	// node, not by operators).
	Meta NodeMeta

	// Admit, if set, vets every member this node learns about (joins and
	// gossip), after the cluster name check; a non-nil error refuses the
	// member (logged, Stats.RefusedJoins). Use it for protocol-version
	// admission (Member.Meta.Proto). Called from memberlist's goroutines
	// while it holds its node lock: it must be fast, must not block and
	// must not call Membership methods.
	Admit func(Member) error

	// Transport replaces memberlist's UDP/TCP transport, e.g. with a
	// fault-injecting clustertest.Transport. BindAddr is then ignored.
	// Default nil (memberlist.NetTransport on BindAddr).
	Transport memberlist.Transport

	// WrapTransport, if set, wraps the transport memberlist uses
	// (Transport, or a memberlist.NetTransport bound to BindAddr that
	// membership then creates itself), e.g. with the debug partition
	// switch of cluster/faults. Default nil.
	WrapTransport func(memberlist.NodeAwareTransport) memberlist.NodeAwareTransport

	// Unreachable, if set, reports whether this node finds member name
	// unreachable by other means than memberlist (the cluster's data
	// plane). A join's state exchange then tells the joiner about such a
	// member as failed even while memberlist still calls it alive or
	// suspects it on another node's word (see failed.go). Default nil.
	Unreachable func(name string) bool

	// Logger receives membership's and memberlist's logs. Default
	// slog.Default().
	Logger *slog.Logger

	// EventQueueLen bounds the events waiting for the EventHandler;
	// beyond it events are dropped and counted (Stats.EventsDropped) so
	// that a stuck handler never blocks memberlist. A consumer that sees
	// drops should re-read Members. Key cluster.event_queue_len.
	// Default 4096.
	EventQueueLen int
}

// DefaultConfig returns a Config tuned for a LAN with the goal of
// declaring a crashed or cut-off member dead within about 2 s.
//
// Detection time is roughly: wait until some member probes the victim
// (up to ProbeInterval), the probe (ProbeInterval), then the suspicion
// timeout (SuspicionMult*ProbeInterval below 10 members, reached only
// once enough other members confirm the suspicion): 0.25-0.5 + 1 s with
// these values, against 5-7 s for memberlist's DefaultLANConfig.
// Measured on loopback (TestMeasureDetection): median 1.44 s (1.34-1.72)
// for 3 nodes, 1.70 s (1.40-2.18) for 5 nodes.
//
// Accepted false-positive risk: a member whose process is paused, or
// whose packets are all lost, for longer than about ProbeInterval plus the
// suspicion timeout (~1.2 s) is declared dead — a GC pause or a CPU-quota
// throttle that long is rare but possible on an overloaded host. The cost
// of such a flap is bounded: the member refutes as soon as it runs again,
// the reconnect loop re-joins it within ReconnectInterval, and the data
// plane is unaffected. A single late ack does not cause a suspicion:
// indirect probes and a TCP ping get the rest of ProbeInterval. Measured
// (TestMeasureFalsePositives, 3 nodes in one process saturating 2 CPUs
// with allocation for 20 s): 2 suspicions, both refuted, 0 false deaths.
func DefaultConfig() Config {
	return Config{
		NodeName:          defaultNodeName(),
		BindAddr:          ":7946",
		ClusterName:       "mendmq",
		ProbeInterval:     250 * time.Millisecond,
		ProbeTimeout:      100 * time.Millisecond,
		SuspicionMult:     4,
		GossipInterval:    100 * time.Millisecond,
		PushPullInterval:  15 * time.Second,
		StreamTimeout:     2 * time.Second,
		ReconnectInterval: 2 * time.Second,
		ReconnectTimeout:  72 * time.Hour,
		EventQueueLen:     4096,
	}
}

// LoopbackConfig returns a Config for tests on 127.0.0.1: timers are
// shorter than DefaultConfig's (a cut-off member of 3 is declared dead in
// 0.7-0.9 s, median 0.87 s measured), yet lenient enough for a busy test
// machine (-race, packages in parallel). BindAddr "127.0.0.1:0" picks a
// free port.
func LoopbackConfig() Config {
	c := DefaultConfig()
	c.BindAddr = "127.0.0.1:0"
	c.ProbeInterval = 150 * time.Millisecond
	c.ProbeTimeout = 75 * time.Millisecond
	c.SuspicionMult = 3
	c.GossipInterval = 30 * time.Millisecond
	c.PushPullInterval = 2 * time.Second
	c.StreamTimeout = 500 * time.Millisecond
	c.ReconnectInterval = 200 * time.Millisecond
	c.ReconnectTimeout = time.Minute
	return c
}

// Validate checks c and returns an error naming the config key and the
// fix for the first problem found.
func (c *Config) Validate() error {
	if err := validName(c.NodeName, 128); err != nil {
		return fmt.Errorf("node.name: %w", err)
	}
	if c.Transport == nil {
		if _, _, err := splitIPPort(c.BindAddr, true); err != nil {
			return fmt.Errorf("cluster.gossip_address %q: %w (want \"ip:port\" or \":port\")", c.BindAddr, err)
		}
	}
	if c.AdvertiseAddr != "" {
		if _, _, err := splitIPPort(c.AdvertiseAddr, false); err != nil {
			return fmt.Errorf("cluster.gossip_advertise_address %q: %w (want \"ip:port\")", c.AdvertiseAddr, err)
		}
	}
	for _, s := range c.Seeds {
		if _, _, err := splitSeed(s, 7946); err != nil {
			return fmt.Errorf("cluster.seeds: %q: %w (want \"host:port\" or \"host\")", s, err)
		}
	}
	if n := len(c.SecretKey); n > 0 && n < 16 {
		return fmt.Errorf("cluster.secret_key: %d bytes is too short; use a 16, 24 or 32 byte key or a passphrase of at least 16 bytes", n)
	}
	if len(c.ClusterName) > 64 {
		return fmt.Errorf("cluster.name: %d bytes is too long (at most 64)", len(c.ClusterName))
	}
	if c.ClusterName != "" {
		if err := validName(c.ClusterName, 64); err != nil {
			return fmt.Errorf("cluster.name: %w", err)
		}
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"cluster.probe_interval", c.ProbeInterval},
		{"cluster.probe_timeout", c.ProbeTimeout},
		{"cluster.gossip_interval", c.GossipInterval},
		{"cluster.gossip_stream_timeout", c.StreamTimeout},
		{"cluster.reconnect_interval", c.ReconnectInterval},
	} {
		if d.v <= 0 {
			return fmt.Errorf("%s: %v must be positive", d.key, d.v)
		}
	}
	if c.ProbeTimeout >= c.ProbeInterval {
		return fmt.Errorf("cluster.probe_timeout: %v must be less than cluster.probe_interval (%v) to leave time for indirect probes", c.ProbeTimeout, c.ProbeInterval)
	}
	if c.SuspicionMult < 1 {
		return fmt.Errorf("cluster.suspicion_mult: %d must be at least 1 (4 is typical)", c.SuspicionMult)
	}
	if c.PushPullInterval < 0 {
		return fmt.Errorf("cluster.push_pull_interval: %v must not be negative (0 disables)", c.PushPullInterval)
	}
	if c.ReconnectTimeout < 0 {
		return fmt.Errorf("cluster.reconnect_timeout: %v must not be negative (0 keeps failed members until forgotten)", c.ReconnectTimeout)
	}
	if c.EventQueueLen < 1 {
		return fmt.Errorf("cluster.event_queue_len: %d must be at least 1", c.EventQueueLen)
	}
	return checkMeta(c.ClusterName, c.Meta)
}

// checkMeta reports metadata that does not fit memberlist's limit.
func checkMeta(cluster string, m NodeMeta) error {
	if len(m.DataAddr) > 255 {
		return fmt.Errorf("cluster.meta: data address is %d bytes, at most 255 allowed", len(m.DataAddr))
	}
	if n := len(encodeMeta(cluster, m)); n > memberlist.MetaMaxSize {
		return fmt.Errorf("cluster.meta: encoded metadata is %d bytes, at most %d allowed; shorten Meta.App or Meta.DataAddr", n, memberlist.MetaMaxSize)
	}
	return nil
}

// validName accepts 1..max bytes of [A-Za-z0-9._-].
func validName(s string, max int) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	if len(s) > max {
		return fmt.Errorf("%q is %d bytes, at most %d allowed", s, len(s), max)
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '.' || ch == '-' || ch == '_') {
			return fmt.Errorf("%q contains %q; use letters, digits, '.', '-' and '_'", s, ch)
		}
	}
	return nil
}

// splitIPPort parses "ip:port"; emptyHost allows ":port".
func splitIPPort(s string, emptyHost bool) (ip string, port int, err error) {
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	port, err = strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	if host == "" {
		if !emptyHost {
			return "", 0, errors.New("missing IP")
		}
		return "", port, nil
	}
	if net.ParseIP(host) == nil {
		return "", 0, fmt.Errorf("%q is not an IP address", host)
	}
	return host, port, nil
}

// splitSeed parses "host[:port]" with defPort for a missing port.
func splitSeed(s string, defPort int) (host string, port int, err error) {
	if s == "" {
		return "", 0, errors.New("empty seed")
	}
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		// No port: a bare host name, IPv4 or bracket-less IPv6 literal.
		if ip := net.ParseIP(s); ip != nil || !containsColon(s) {
			return s, defPort, nil
		}
		return "", 0, err
	}
	if host == "" {
		return "", 0, errors.New("missing host")
	}
	port, err = strconv.Atoi(p)
	if err != nil || port <= 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	return host, port, nil
}

func containsColon(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == ':' {
			return true
		}
	}
	return false
}
