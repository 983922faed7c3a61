package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/mendmq/mendmq/cluster/dataplane"
	"github.com/mendmq/mendmq/cluster/membership"
	"github.com/mendmq/mendmq/cluster/merge"
	"github.com/mendmq/mendmq/cluster/netsplit"
	"github.com/mendmq/mendmq/cluster/partition"
	"github.com/mendmq/mendmq/cluster/pmap"
)

// Config is the cluster section of the node configuration (keys
// cluster.*). Timing knobs default to membership.DefaultConfig and
// dataplane.DefaultConfig; their doc comments explain the trade-offs.
type Config struct {
	// Enabled is cluster.enabled: join a cluster. Default false (a
	// single node).
	Enabled bool `koanf:"enabled"`
	// Name is cluster.name: nodes of another cluster are refused.
	// Default "mendmq".
	Name string `koanf:"name"`
	// GossipAddress is cluster.gossip_address: memberlist's UDP+TCP bind
	// address. Default ":7946".
	GossipAddress string `koanf:"gossip_address"`
	// GossipAdvertiseAddress is cluster.gossip_advertise_address: the
	// ip:port other nodes use to reach gossip (NAT, containers).
	GossipAdvertiseAddress string `koanf:"gossip_advertise_address"`
	// DataAddress is cluster.data_address: the data plane's bind address
	// (routed publishes, replication, RPCs). Default ":7947".
	DataAddress string `koanf:"data_address"`
	// DataAdvertiseAddress is cluster.data_advertise_address: the
	// host:port peers dial for the data plane. Default: the data
	// address, with the gossip advertise/bind host when its host is
	// empty.
	DataAdvertiseAddress string `koanf:"data_advertise_address"`
	// Seeds is cluster.seeds: gossip addresses (host:port) to join; a DNS
	// name resolves to all its addresses (Kubernetes headless service).
	Seeds []string `koanf:"seeds"`
	// SecretKey is cluster.secret_key: encrypts gossip and authenticates
	// the data plane; the same on every node. Required when the cluster
	// is enabled: without it any process that reaches the data address
	// could inject publishes and rewrite the replicated tables. 16, 24
	// or 32 bytes are an AES key; other lengths (>= 16) a passphrase.
	SecretKey string `koanf:"secret_key"`

	// Membership timing; see membership.Config for each trade-off.
	ProbeInterval     time.Duration `koanf:"probe_interval"`
	ProbeTimeout      time.Duration `koanf:"probe_timeout"`
	SuspicionMult     int           `koanf:"suspicion_mult"`
	GossipInterval    time.Duration `koanf:"gossip_interval"`
	PushPullInterval  time.Duration `koanf:"push_pull_interval"`
	ReconnectInterval time.Duration `koanf:"reconnect_interval"`
	ReconnectTimeout  time.Duration `koanf:"reconnect_timeout"`

	// AntiEntropyInterval is cluster.anti_entropy_interval: how often the
	// node compares table digests with one random peer and repairs what
	// broadcasts missed. Default 2s. A joining node syncs at once.
	AntiEntropyInterval time.Duration `koanf:"anti_entropy_interval"`
	// ForwardTimeout is cluster.forward_timeout: the longest a QoS1/2
	// publish waits for remote nodes to accept it before the publisher
	// gets an error instead of an ack. Default 5s.
	ForwardTimeout time.Duration `koanf:"forward_timeout"`
	// RegisterTimeout is cluster.register_timeout: the longest a CONNECT
	// waits for the client id's leader. Default 5s.
	RegisterTimeout time.Duration `koanf:"register_timeout"`
	// SharedSubscriptionPolicy is cluster.shared_subscription_policy.
	// The one policy is prefer_local: a group with a member on the
	// publishing node is served there, otherwise by a random node with
	// members. (A cluster-wide random pick would need mochi to skip its
	// local selection; until then it would deliver twice.)
	SharedSubscriptionPolicy string `koanf:"shared_subscription_policy"`
	// DataQueueFrames and DataQueueBytes are cluster.data_queue_frames and
	// cluster.data_queue_bytes: the bound of each peer's send queue.
	// Beyond it QoS 0 forwards are dropped (counted) and QoS 1/2 ones
	// wait for room until cluster.forward_timeout. Defaults 65536
	// frames, 64 MiB.
	DataQueueFrames int `koanf:"data_queue_frames"`
	DataQueueBytes  int `koanf:"data_queue_bytes"`
	// DataKeepaliveInterval and DataIdleTimeout are
	// cluster.data_keepalive_interval and cluster.data_idle_timeout: a
	// data-plane connection quiet for the interval sends a keepalive, and
	// one that received nothing for the timeout is closed — which is how
	// a cut link is noticed when memberlist cannot see it (netsplit
	// detection: the timeout plus cluster.netsplit_link_grace). The
	// timeout must exceed twice the interval. Defaults 250ms, 1s.
	DataKeepaliveInterval time.Duration `koanf:"data_keepalive_interval"`
	DataIdleTimeout       time.Duration `koanf:"data_idle_timeout"`
	// DataReconnectMin and DataReconnectMax are cluster.data_reconnect_min
	// and cluster.data_reconnect_max: the backoff between dials of an
	// unreachable peer (a member membership reports back is redialed at
	// once). Defaults 100ms, 2s.
	DataReconnectMin time.Duration `koanf:"data_reconnect_min"`
	DataReconnectMax time.Duration `koanf:"data_reconnect_max"`
	// DataTLS is cluster.data_tls: mutual TLS on the data plane, which
	// encrypts the publish stream and replication (the secret's HMAC
	// handshake still runs inside). All three keys or none.
	DataTLS DataTLS `koanf:"data_tls"`
	// TombstoneGrace is cluster.tombstone_grace: how long deletions are
	// remembered for replication. A node partitioned away for longer may
	// resurrect deleted subscriptions or retained messages. Default 24h.
	TombstoneGrace time.Duration `koanf:"tombstone_grace"`

	// NetsplitMode is cluster.netsplit_mode: "any" (default, VerneMQ's
	// rule: any unreachable member gates this node) or "majority" (only a
	// side that does not see a strict majority of the last agreed
	// membership gates; the majority side keeps serving and its writes
	// are merged into the minority's at the heal). See package netsplit.
	NetsplitMode string `koanf:"netsplit_mode"`
	// NetsplitLinkGrace is cluster.netsplit_link_grace: how long a
	// data-plane link to a member must stay down before the member counts
	// as unreachable (shorter outages are flaps). Default 300ms.
	NetsplitLinkGrace time.Duration `koanf:"netsplit_link_grace"`
	// AllowRegisterDuringNetsplit, AllowPublishDuringNetsplit,
	// AllowSubscribeDuringNetsplit and AllowUnsubscribeDuringNetsplit are
	// cluster.allow_{register,publish,subscribe,unsubscribe}_during_netsplit:
	// what a gated node still accepts. All default false (VerneMQ):
	// CONNECT, PUBLISH, SUBSCRIBE and UNSUBSCRIBE are refused while gated.
	// They change by hot reload.
	AllowRegisterDuringNetsplit    bool `koanf:"allow_register_during_netsplit"`
	AllowPublishDuringNetsplit     bool `koanf:"allow_publish_during_netsplit"`
	AllowSubscribeDuringNetsplit   bool `koanf:"allow_subscribe_during_netsplit"`
	AllowUnsubscribeDuringNetsplit bool `koanf:"allow_unsubscribe_during_netsplit"`
	// NetsplitQueueMessages and NetsplitQueueBytes are
	// cluster.netsplit_queue_messages and cluster.netsplit_queue_bytes:
	// the bound of the queue of QoS 1/2 publishes (and wills) held for
	// each unreachable node until it is back. A publish that does not fit
	// is refused (v5: PUBACK/PUBREC 0x97 quota exceeded), never dropped.
	// Defaults 100000 messages, 64 MiB.
	NetsplitQueueMessages int `koanf:"netsplit_queue_messages"`
	NetsplitQueueBytes    int `koanf:"netsplit_queue_bytes"`
	// ReadyzDuringNetsplit is cluster.readyz_during_netsplit: whether
	// /readyz reports ready while the node is gated. Default true; false
	// takes a gated node out of a load balancer's rotation, so clients
	// reconnect to a node that serves.
	ReadyzDuringNetsplit bool `koanf:"readyz_during_netsplit"`

	// MapPartitionCount is cluster.map_partition_count: the partitions of
	// the partitioned maps (Hazelcast: 271). Every node must use the same
	// value. (The map settings proper are under maps.<name>; these two
	// are cluster-wide, and maps.* is keyed by map name.)
	MapPartitionCount int `koanf:"map_partition_count"`
	// MapMergeBatchSize is cluster.map_merge_batch_size: map entries per
	// merge call when a netsplit heals (Hazelcast: 100).
	MapMergeBatchSize int `koanf:"map_merge_batch_size"`
	// MapMaxBackups is the backups the partition table keeps per
	// partition: the largest maps.<name>.backup_count (the broker sets it
	// at start; a larger one needs a restart). Default 1.
	MapMaxBackups int `koanf:"-"`
	// MapConfig returns a map's settings (maps.<name>, or maps.default);
	// nil: one sync backup, no limits.
	MapConfig func(name string) pmap.MapConfig `koanf:"-"`

	// StoragePath is the cluster's own storage file (the broker sets it to
	// storage.path + ".cluster"); empty keeps held publishes in memory.
	StoragePath string `koanf:"-"`

	// Transport replaces memberlist's network (tests inject faults).
	Transport memberlist.Transport `koanf:"-"`
	// DataNetwork replaces the data plane's TCP (tests inject faults).
	DataNetwork dataplane.Network `koanf:"-"`
	// Logger is the node's logger.
	Logger *slog.Logger `koanf:"-"`
	// Clock is the node's wall clock for stamping CONNECTs (a hybrid
	// logical clock runs on it, see package hlc) and timing session
	// records. Nil: time.Now. Tests inject clock skew.
	Clock func() time.Time `koanf:"-"`
	// Receive, if set, sees every data-plane frame and call this node
	// receives from a peer (its sender, message type, and whether it is a
	// call) before it is handled; a non-nil error drops it, as a lost
	// message. Tests use it to cut links at a precise step of a protocol
	// (a takeover's finish, the middle of an anti-entropy repair). It runs
	// on the data plane's reader goroutine: it must be quick.
	Receive func(from string, typ uint8, call bool) error `koanf:"-"`
	// Merger decides conflicting replicated entries: concurrent retained
	// messages (map "$retained"), through the merge policies
	// (plugins.Registry). Nil: the latest update wins, ties to the later
	// write in canonical order (the latestupdate rule).
	Merger merge.Merger `koanf:"-"`
}

// DefaultConfig returns the defaults (cluster disabled).
func DefaultConfig() Config {
	m := membership.DefaultConfig()
	dp := dataplane.DefaultConfig()
	return Config{
		Name:                     "mendmq",
		GossipAddress:            ":7946",
		DataAddress:              ":7947",
		Seeds:                    []string{},
		ProbeInterval:            m.ProbeInterval,
		ProbeTimeout:             m.ProbeTimeout,
		SuspicionMult:            m.SuspicionMult,
		GossipInterval:           m.GossipInterval,
		PushPullInterval:         m.PushPullInterval,
		ReconnectInterval:        m.ReconnectInterval,
		ReconnectTimeout:         m.ReconnectTimeout,
		AntiEntropyInterval:      2 * time.Second,
		ForwardTimeout:           5 * time.Second,
		RegisterTimeout:          5 * time.Second,
		SharedSubscriptionPolicy: "prefer_local",
		TombstoneGrace:           24 * time.Hour,
		DataQueueFrames:          dp.QueueFrames,
		DataQueueBytes:           dp.QueueBytes,
		DataKeepaliveInterval:    dp.KeepaliveInterval,
		DataIdleTimeout:          dp.IdleTimeout,
		DataReconnectMin:         dp.ReconnectMin,
		DataReconnectMax:         dp.ReconnectMax,
		NetsplitMode:             "any",
		MapPartitionCount:        partition.DefaultCount,
		MapMergeBatchSize:        100,
		NetsplitQueueMessages:    100000,
		NetsplitQueueBytes:       64 << 20,
		NetsplitLinkGrace:        netsplit.DefaultConfig().LinkGrace,
		ReadyzDuringNetsplit:     true,
	}
}

// DataTLS is the cluster.data_tls section. Each node presents CertFile,
// which must name the node's node.name as a DNS name (peers dial a node
// and verify that name) and be signed by the CA in CAFile, which verifies
// peers in both directions.
type DataTLS struct {
	CertFile string `koanf:"cert_file"`
	KeyFile  string `koanf:"key_file"`
	CAFile   string `koanf:"ca_file"`
}

// Enabled reports whether any key is set.
func (t DataTLS) Enabled() bool { return t.CertFile != "" || t.KeyFile != "" || t.CAFile != "" }

// validate names the keys a partial section lacks.
func (t DataTLS) validate() error {
	if !t.Enabled() {
		return nil
	}
	var errs []error
	for _, f := range []struct{ k, v string }{{"cert_file", t.CertFile}, {"key_file", t.KeyFile}, {"ca_file", t.CAFile}} {
		if f.v == "" {
			errs = append(errs, fmt.Errorf("cluster.data_tls.%s: required when cluster.data_tls is set (PEM file)", f.k))
		}
	}
	return errors.Join(errs...)
}

// Load reads the files into a mutual-TLS configuration.
func (t DataTLS) Load() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("cluster.data_tls.cert_file, key_file: %w", err)
	}
	pem, err := os.ReadFile(t.CAFile)
	if err != nil {
		return nil, fmt.Errorf("cluster.data_tls.ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("cluster.data_tls.ca_file: %s holds no PEM certificate", t.CAFile)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// LoopbackConfig returns settings for clusters on 127.0.0.1 in tests:
// free ports and fast timers.
func LoopbackConfig() Config {
	c := DefaultConfig()
	m := membership.LoopbackConfig()
	c.Enabled = true
	c.GossipAddress = "127.0.0.1:0"
	c.DataAddress = "127.0.0.1:0"
	c.ProbeInterval, c.ProbeTimeout, c.SuspicionMult = m.ProbeInterval, m.ProbeTimeout, m.SuspicionMult
	c.GossipInterval, c.PushPullInterval = m.GossipInterval, m.PushPullInterval
	c.ReconnectInterval, c.ReconnectTimeout = m.ReconnectInterval, m.ReconnectTimeout
	l := dataplane.LoopbackConfig()
	c.DataKeepaliveInterval, c.DataIdleTimeout, c.DataReconnectMin, c.DataReconnectMax = l.KeepaliveInterval, l.IdleTimeout, l.ReconnectMin, l.ReconnectMax
	c.AntiEntropyInterval = 300 * time.Millisecond
	c.ForwardTimeout = 3 * time.Second
	c.RegisterTimeout = 3 * time.Second
	c.SecretKey = LoopbackSecret
	return c
}

// LoopbackSecret is LoopbackConfig's cluster.secret_key, for tests that
// speak the data-plane protocol themselves.
const LoopbackSecret = "loopback-test-only-secret-32byte"

// Validate checks the cluster section; errors name the key.
func (c *Config) Validate() error {
	if !c.Enabled {
		return nil
	}
	var errs []error
	for _, a := range []struct{ key, v string }{
		{"cluster.gossip_address", c.GossipAddress}, {"cluster.data_address", c.DataAddress},
	} {
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			errs = append(errs, fmt.Errorf("%s: %q is not host:port (%v)", a.key, a.v, err))
		}
	}
	if _, port, _ := net.SplitHostPort(c.DataAddress); c.GossipAddress == c.DataAddress && port != "0" {
		errs = append(errs, fmt.Errorf("cluster.data_address: %q is also cluster.gossip_address; use another port", c.DataAddress))
	}
	switch {
	case c.SecretKey == "":
		errs = append(errs, errors.New("cluster.secret_key: required when cluster.enabled is true (it authenticates nodes to each other); "+
			"set the same value on every node, e.g. the output of `openssl rand -base64 24`"))
	case len(c.SecretKey) < 16:
		errs = append(errs, errors.New("cluster.secret_key: shorter than 16 bytes; use a 16/24/32-byte key or a longer passphrase"))
	}
	if c.AntiEntropyInterval <= 0 {
		errs = append(errs, errors.New("cluster.anti_entropy_interval: must be > 0 (e.g. 2s)"))
	}
	if c.ForwardTimeout <= 0 || c.RegisterTimeout <= 0 {
		errs = append(errs, errors.New("cluster.forward_timeout, cluster.register_timeout: must be > 0"))
	}
	switch c.SharedSubscriptionPolicy {
	case "prefer_local":
	default:
		errs = append(errs, fmt.Errorf("cluster.shared_subscription_policy: %q is not supported; use prefer_local", c.SharedSubscriptionPolicy))
	}
	if c.TombstoneGrace < time.Minute {
		errs = append(errs, errors.New("cluster.tombstone_grace: must be >= 1m"))
	}
	if c.DataQueueFrames < 1 {
		errs = append(errs, fmt.Errorf("cluster.data_queue_frames: %d, must be >= 1 (default 65536)", c.DataQueueFrames))
	}
	if c.DataQueueBytes < 1024 {
		errs = append(errs, fmt.Errorf("cluster.data_queue_bytes: %d, must be >= 1024 (default 67108864)", c.DataQueueBytes))
	}
	if c.DataKeepaliveInterval <= 0 || c.DataIdleTimeout <= 2*c.DataKeepaliveInterval {
		errs = append(errs, fmt.Errorf("cluster.data_idle_timeout (%v) must exceed twice cluster.data_keepalive_interval (%v), both > 0 (defaults 1s, 250ms)",
			c.DataIdleTimeout, c.DataKeepaliveInterval))
	}
	if c.DataReconnectMin <= 0 || c.DataReconnectMax < c.DataReconnectMin {
		errs = append(errs, fmt.Errorf("cluster.data_reconnect_min (%v) must be > 0 and <= cluster.data_reconnect_max (%v) (defaults 100ms, 2s)",
			c.DataReconnectMin, c.DataReconnectMax))
	}
	if err := c.DataTLS.validate(); err != nil {
		errs = append(errs, err)
	}
	if _, err := netsplit.ParseMode(c.NetsplitMode); err != nil {
		errs = append(errs, err)
	}
	if c.MapPartitionCount < 1 || c.MapPartitionCount > 1<<16 {
		errs = append(errs, fmt.Errorf("cluster.map_partition_count: %d, must be 1..65536 (default 271, the same on every node)", c.MapPartitionCount))
	}
	if c.MapMergeBatchSize < 1 || c.MapMergeBatchSize > 10000 {
		errs = append(errs, fmt.Errorf("cluster.map_merge_batch_size: %d, must be 1..10000 (default 100)", c.MapMergeBatchSize))
	}
	if c.NetsplitQueueMessages < 1 {
		errs = append(errs, fmt.Errorf("cluster.netsplit_queue_messages: %d, must be >= 1 (default 100000)", c.NetsplitQueueMessages))
	}
	if c.NetsplitQueueBytes < 1024 {
		errs = append(errs, fmt.Errorf("cluster.netsplit_queue_bytes: %d, must be >= 1024 (default 67108864)", c.NetsplitQueueBytes))
	}
	if c.NetsplitLinkGrace < 0 {
		errs = append(errs, fmt.Errorf("cluster.netsplit_link_grace: %v, must be >= 0 (default 300ms)", c.NetsplitLinkGrace))
	}
	return errors.Join(errs...)
}
