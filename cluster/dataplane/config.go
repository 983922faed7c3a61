package dataplane

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"
)

// Network is how the data plane listens and dials; the default is plain
// TCP. clustertest.DataNetwork implements it to cut links in tests.
type Network interface {
	Listen(addr string) (net.Listener, error)
	Dial(ctx context.Context, addr string) (net.Conn, error)
}

// TCPNetwork is the default Network: TCP with no delay.
type TCPNetwork struct{}

// Listen implements Network.
func (TCPNetwork) Listen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

// Dial implements Network.
func (TCPNetwork) Dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

var _ Network = TCPNetwork{}

// Config configures a Plane. Start from DefaultConfig or LoopbackConfig;
// the comment of each field names its config key.
type Config struct {
	// NodeName is this node's name, sent in the handshake; peers dial it
	// by this name and refuse a node that answers with another one.
	// Key node.name (the same as membership's).
	NodeName string

	// ClusterName must match between peers. Key cluster.name.
	ClusterName string

	// BindAddr is the "host:port" to listen on. Key cluster.data_address.
	// Default ":7947".
	BindAddr string

	// SecretKey authenticates peers: both sides prove knowledge of it
	// with HMAC-SHA256 over the handshake (nonces of both sides, both
	// node names and the cluster name), so a peer without it is refused.
	// The frames themselves are not encrypted; set TLS for that. Empty
	// disables authentication (trusted networks and tests only). Key
	// cluster.secret_key (the same as membership's).
	SecretKey []byte

	// TLS, if set, wraps every connection in TLS: it must carry this
	// node's certificate, RootCAs to verify peers and, for mutual TLS,
	// ClientCAs with ClientAuth = tls.RequireAndVerifyClientCert. When
	// ServerName is empty the peer's node name is the expected server
	// name. The HMAC handshake still runs inside. Keys cluster.data_tls.*.
	TLS *tls.Config

	// Network replaces plain TCP (tests). Default TCPNetwork.
	Network Network

	// Refuse, if set, is asked before each dial to a peer and for the
	// name each inbound dialer claims; an error refuses the link (the
	// dial fails, the inbound handshake is rejected with the error's
	// text). The admin debug partition switch (cluster/faults) uses it;
	// call Plane.Reset when its answer for a peer changes.
	Refuse func(peer string) error

	// MaxFrameSize bounds a frame body (the payload, plus 8 bytes for
	// calls and replies). Larger incoming frames close the connection;
	// larger outgoing ones are refused with ErrFrameTooLarge. Key
	// cluster.data_max_frame_size. Default 16 MiB.
	MaxFrameSize int

	// QueueFrames and QueueBytes bound each peer's send queue (frames
	// and payload bytes waiting for the connection). Send returns
	// ErrQueueFull beyond either. Memory per slow peer is about
	// QueueBytes plus one write buffer. Keys cluster.data_queue_frames,
	// cluster.data_queue_bytes. Defaults 65536 frames, 64 MiB.
	QueueFrames int
	QueueBytes  int

	// BufferSize is the read and the write buffer of each connection;
	// frames are batched into writes of up to this size. Key
	// cluster.data_buffer_size. Default 64 KiB.
	BufferSize int

	// DialTimeout bounds establishing a TCP connection, HandshakeTimeout
	// the handshake (TLS and HMAC) on both sides, so a peer that opens a
	// connection and goes silent is dropped. Keys
	// cluster.data_dial_timeout, cluster.data_handshake_timeout. Defaults
	// 2s, 3s.
	DialTimeout      time.Duration
	HandshakeTimeout time.Duration

	// KeepaliveInterval: a connection quiet for this long sends an empty
	// control frame. IdleTimeout: a connection that received nothing for
	// this long is closed — a peer that vanished without closing (netsplit,
	// frozen host) is noticed within IdleTimeout. Must exceed
	// 2*KeepaliveInterval. Keys cluster.data_keepalive_interval,
	// cluster.data_idle_timeout. Defaults 250ms, 1s: a cut link is seen
	// within about a second (netsplit detection of a broken link).
	KeepaliveInterval time.Duration
	IdleTimeout       time.Duration

	// ReconnectMin and ReconnectMax bound the exponential backoff (with
	// jitter) between attempts to reach an unreachable peer. Keys
	// cluster.data_reconnect_min, cluster.data_reconnect_max. Defaults
	// 100ms, 2s.
	ReconnectMin time.Duration
	ReconnectMax time.Duration

	// CallTimeout applies to Call when its context has no deadline. Key
	// cluster.data_call_timeout. Default 10s.
	CallTimeout time.Duration

	// MaxConcurrentCalls bounds the HandleCall invocations running at
	// once for one connection; further calls wait (back-pressure on that
	// peer). It is also the most worker goroutines an inbound connection
	// keeps (started on demand, ended with the connection). Key
	// cluster.data_max_concurrent_calls. Default 64.
	MaxConcurrentCalls int

	// MaxPendingHandshakes bounds connections accepted but not yet
	// authenticated; beyond it new connections are closed at once. Key
	// cluster.data_max_pending_handshakes. Default 64.
	MaxPendingHandshakes int

	// Logger receives connection-level logs. Default slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns a Config for a LAN. Set NodeName, ClusterName
// and SecretKey.
func DefaultConfig() Config {
	return Config{
		ClusterName:          "mendmq",
		BindAddr:             ":7947",
		MaxFrameSize:         16 << 20,
		QueueFrames:          1 << 16,
		QueueBytes:           64 << 20,
		BufferSize:           64 << 10,
		DialTimeout:          2 * time.Second,
		HandshakeTimeout:     3 * time.Second,
		KeepaliveInterval:    250 * time.Millisecond,
		IdleTimeout:          time.Second,
		ReconnectMin:         100 * time.Millisecond,
		ReconnectMax:         2 * time.Second,
		CallTimeout:          10 * time.Second,
		MaxConcurrentCalls:   64,
		MaxPendingHandshakes: 64,
	}
}

// LoopbackConfig returns a Config for tests on 127.0.0.1 (free port,
// short timers).
func LoopbackConfig() Config {
	c := DefaultConfig()
	c.BindAddr = "127.0.0.1:0"
	c.DialTimeout = time.Second
	c.HandshakeTimeout = time.Second
	c.KeepaliveInterval = 100 * time.Millisecond
	c.IdleTimeout = time.Second
	c.ReconnectMin = 10 * time.Millisecond
	c.ReconnectMax = 200 * time.Millisecond
	c.CallTimeout = 5 * time.Second
	return c
}

// Validate checks c and returns an error naming the config key and the
// fix for the first problem found.
func (c *Config) Validate() error {
	if err := validName(c.NodeName); err != nil {
		return fmt.Errorf("node.name: %w", err)
	}
	if len(c.ClusterName) > maxNameLen {
		return fmt.Errorf("cluster.name: %d bytes, at most %d allowed", len(c.ClusterName), maxNameLen)
	}
	if _, p, err := net.SplitHostPort(c.BindAddr); err != nil {
		return fmt.Errorf("cluster.data_address %q: %w (want \"host:port\")", c.BindAddr, err)
	} else if n, err := strconv.Atoi(p); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("cluster.data_address %q: bad port %q", c.BindAddr, p)
	}
	if n := len(c.SecretKey); n > 0 && n < 16 {
		return fmt.Errorf("cluster.secret_key: %d bytes is too short; use at least 16 bytes", n)
	}
	ints := []struct {
		key    string
		v, min int
	}{
		{"cluster.data_max_frame_size", c.MaxFrameSize, 1024},
		{"cluster.data_queue_frames", c.QueueFrames, 1},
		{"cluster.data_queue_bytes", c.QueueBytes, 1024},
		{"cluster.data_buffer_size", c.BufferSize, 4096},
		{"cluster.data_max_concurrent_calls", c.MaxConcurrentCalls, 1},
		{"cluster.data_max_pending_handshakes", c.MaxPendingHandshakes, 1},
	}
	for _, i := range ints {
		if i.v < i.min {
			return fmt.Errorf("%s: %d is below the minimum %d", i.key, i.v, i.min)
		}
	}
	if c.MaxFrameSize > 1<<30 {
		return fmt.Errorf("cluster.data_max_frame_size: %d exceeds 1 GiB", c.MaxFrameSize)
	}
	durs := []struct {
		key string
		v   time.Duration
	}{
		{"cluster.data_dial_timeout", c.DialTimeout},
		{"cluster.data_handshake_timeout", c.HandshakeTimeout},
		{"cluster.data_keepalive_interval", c.KeepaliveInterval},
		{"cluster.data_idle_timeout", c.IdleTimeout},
		{"cluster.data_reconnect_min", c.ReconnectMin},
		{"cluster.data_reconnect_max", c.ReconnectMax},
		{"cluster.data_call_timeout", c.CallTimeout},
	}
	for _, d := range durs {
		if d.v <= 0 {
			return fmt.Errorf("%s: %v must be positive", d.key, d.v)
		}
	}
	if c.IdleTimeout <= 2*c.KeepaliveInterval {
		return fmt.Errorf("cluster.data_idle_timeout: %v must exceed twice cluster.data_keepalive_interval (%v), or healthy idle connections are dropped", c.IdleTimeout, c.KeepaliveInterval)
	}
	if c.ReconnectMax < c.ReconnectMin {
		return fmt.Errorf("cluster.data_reconnect_max: %v is below cluster.data_reconnect_min (%v)", c.ReconnectMax, c.ReconnectMin)
	}
	return nil
}

func validName(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	if len(s) > maxNameLen {
		return fmt.Errorf("%d bytes, at most %d allowed", len(s), maxNameLen)
	}
	return nil
}
