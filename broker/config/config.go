// Package config loads and validates mendmq's configuration.
//
// Layers, later wins (DESIGN §6): the embedded configs/default.yaml, then
// the file named by --config (YAML or TOML), then MENDMQ_ environment
// variables (a double underscore separates levels:
// MENDMQ_MQTT__MAX_PACKET_SIZE=65536), then --set key=value flags.
//
// Every layer is decoded strictly: an unknown key or a value of the wrong
// type is refused with an error naming the key, so a typo never silently
// falls back to a default.
package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"strings"
	"time"

	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/plugins"
)

// Config is the whole node configuration. Field comments give the key, the
// default and what it trades off; configs/reference.yaml repeats them for
// operators and a test keeps default.yaml and DefaultConfig in step.
type Config struct {
	Node    NodeConfig     `koanf:"node"`
	Log     LogConfig      `koanf:"log"`
	MQTT    MQTTConfig     `koanf:"mqtt"`
	Admin   AdminConfig    `koanf:"admin"`
	Auth    AuthConfig     `koanf:"auth"`
	Storage StorageConfig  `koanf:"storage"`
	Cluster cluster.Config `koanf:"cluster"`
	// Plugins holds the merge-policy keys: policies.<name>.module,
	// maps.<name>.merge_policy, retained.merge_policy and plugins.*.
	Plugins plugins.Config `koanf:",squash"`
}

// NodeConfig identifies this node.
type NodeConfig struct {
	// Name is node.name: the node's identity in the cluster; unique per
	// cluster. Empty means the host name.
	Name string `koanf:"name"`
}

// LogConfig shapes the structured log.
type LogConfig struct {
	// Level is log.level: debug, info, warn or error. Default info.
	Level string `koanf:"level"`
	// Format is log.format: text or json. Default text.
	Format string `koanf:"format"`
}

// ListenerConfig is one entry of mqtt.listeners.
type ListenerConfig struct {
	// Type is tcp, tls or ws (WebSocket, path-agnostic).
	Type string `koanf:"type"`
	// Address is host:port to bind, e.g. ":1883" or "127.0.0.1:8883".
	Address string `koanf:"address"`
	// CertFile and KeyFile are the PEM certificate and key for type tls
	// (required there, refused elsewhere).
	CertFile string `koanf:"cert_file"`
	KeyFile  string `koanf:"key_file"`
	// ClientCAFile, when set on a tls listener, requires client
	// certificates signed by this PEM bundle (mutual TLS).
	ClientCAFile string `koanf:"client_ca_file"`
}

// MQTTConfig covers the MQTT front: listeners and protocol limits.
type MQTTConfig struct {
	// Listeners is mqtt.listeners. Default one TCP listener on :1883.
	Listeners []ListenerConfig `koanf:"listeners"`
	// MaxPacketSize is mqtt.max_packet_size in bytes: announced to v5
	// clients in CONNACK (Maximum Packet Size); larger packets are refused
	// and the client disconnected (v5: DISCONNECT 0x95 first). Default
	// 1 MiB; 0 means the protocol maximum (256 MiB, not announced), which
	// lets one client make the broker buffer that much.
	MaxPacketSize uint32 `koanf:"max_packet_size"`
	// ServerKeepAlive is mqtt.server_keep_alive: the longest keep-alive an
	// MQTT 5 client gets, in whole seconds up to 65535s. A client asking
	// for more, or for none (0), gets this one; the CONNACK carries it as
	// Server Keep Alive and the connection is closed after 1.5 times it
	// without a packet. Shorter finds dead connections sooner at the cost
	// of more PINGREQs. MQTT 3.1.1 clients keep their own (3.1.1 cannot
	// tell them another). Default 0s = every client keeps its own.
	ServerKeepAlive time.Duration `koanf:"server_keep_alive"`
	// ConnectTimeout is mqtt.connect_timeout: how long a new connection may
	// take to send CONNECT before it is closed (slow-loris guard).
	// Default 10s.
	ConnectTimeout time.Duration `koanf:"connect_timeout"`
	// MaxConnections is mqtt.max_connections: connected clients at most;
	// beyond it CONNECT is refused (v5 0x89 server busy, v3 rc 3).
	// Default 0 = unlimited.
	MaxConnections int64 `koanf:"max_connections"`
	// MaxConnectRate is mqtt.max_connect_rate: new connections accepted per
	// second per listener (burst of the same size); excess connections are
	// closed at once. Default 0 = unlimited.
	MaxConnectRate int `koanf:"max_connect_rate"`
	// MaxQueuedMessages is mqtt.max_queued_messages: pending outbound writes
	// per client before QoS0 messages to it are dropped (counted).
	// Default 8192 (mochi's default).
	MaxQueuedMessages int32 `koanf:"max_queued_messages"`
	// MaxInflight is mqtt.max_inflight: stored unacknowledged QoS1/2
	// messages per client. Default 8192.
	MaxInflight uint16 `koanf:"max_inflight"`
	// ReceiveMaximum is mqtt.receive_maximum: concurrent inbound QoS1/2
	// messages per client (v5 Receive Maximum, announced in CONNACK): a
	// client that starts one more while that many of its QoS 2 messages
	// are not completed is disconnected (v5: DISCONNECT 0x93). Default
	// 1024.
	ReceiveMaximum uint16 `koanf:"receive_maximum"`
	// MaxSessionExpiry is mqtt.max_session_expiry: the longest a
	// disconnected persistent session is kept, capping what clients ask
	// for. Default 0 = no cap (the client's requested expiry is honoured).
	MaxSessionExpiry time.Duration `koanf:"max_session_expiry"`
	// MaxMessageExpiry is mqtt.max_message_expiry: the longest a message
	// (retained or queued) lives. Default 24h.
	MaxMessageExpiry time.Duration `koanf:"max_message_expiry"`
	// SysInterval is mqtt.sys_interval: how often $SYS topics are
	// published. Default 10s.
	SysInterval time.Duration `koanf:"sys_interval"`
}

// AdminConfig is the operator HTTP server.
type AdminConfig struct {
	// Address is admin.address. Default 127.0.0.1:8080; empty disables the
	// admin server. It serves /healthz, /readyz, /metrics, /api/v1 and the
	// status page. On an address other than loopback the node refuses to
	// start unless TokenFile or TLS.ClientCAFile authenticates requests.
	Address string `koanf:"address"`
	// TokenFile is admin.token_file: a file holding the bearer token
	// (surrounding whitespace ignored; at least 16 bytes). When set, every
	// request except /healthz and /readyz must carry
	// "Authorization: Bearer TOKEN" (or HTTP Basic auth with the token as
	// the password, for browsers). Read at start. Default "" (no token).
	TokenFile string `koanf:"token_file"`
	// TLS is admin.tls: HTTPS for the admin server, and with
	// client_ca_file mutual TLS.
	TLS AdminTLSConfig `koanf:"tls"`
	// Debug is admin.debug: enables the development endpoints under
	// /api/v1/debug, today the partition switch that makes this node
	// drop its cluster traffic to and from named members (`mendmq ctl
	// debug partition n3`, `... heal`). Never in production. Changes by
	// hot reload; turning it off heals every cut. Default false.
	Debug bool `koanf:"debug"`
}

// AdminTLSConfig is admin.tls. Default: all empty (plain HTTP).
type AdminTLSConfig struct {
	// CertFile and KeyFile are admin.tls.cert_file and key_file: the PEM
	// certificate and key the admin server presents; both or neither.
	CertFile string `koanf:"cert_file"`
	KeyFile  string `koanf:"key_file"`
	// ClientCAFile is admin.tls.client_ca_file: PEM CAs whose client
	// certificates authenticate a request (mutual TLS). A request with such
	// a certificate needs no token; one without gets 401 (except /healthz
	// and /readyz, which probes reach without a certificate). Needs
	// cert_file and key_file.
	ClientCAFile string `koanf:"client_ca_file"`
}

// MinAdminTokenLen is the shortest admin token accepted, in bytes.
const MinAdminTokenLen = 16

// AuthConfig configures authentication and authorization.
type AuthConfig struct {
	// AllowAnonymous is auth.allow_anonymous: whether clients without a
	// username may connect. Default true (so `make run` just works).
	AllowAnonymous bool `koanf:"allow_anonymous"`
	// Users is auth.users: username and bcrypt password hash.
	Users []UserConfig `koanf:"users"`
	// ACL is auth.acl: rules checked in order, first match wins. With no
	// rules every topic is allowed; with rules, no match means deny.
	ACL []ACLRule `koanf:"acl"`
}

// UserConfig is one entry of auth.users.
type UserConfig struct {
	Username string `koanf:"username"`
	// PasswordHash is a bcrypt hash ($2a$, $2b$ or $2y$), e.g. from
	// `mendmq passwd`.
	PasswordHash string `koanf:"password_hash"`
}

// ACLRule is one entry of auth.acl.
type ACLRule struct {
	// Username limits the rule to one user; empty applies it to everyone.
	Username string `koanf:"username"`
	// ClientID limits the rule to one client id; empty for any.
	ClientID string `koanf:"client_id"`
	// Filter is an MQTT topic filter; %c is replaced by the client id and
	// %u by the username before matching.
	Filter string `koanf:"filter"`
	// Access is read (subscribe), write (publish), readwrite, or deny.
	Access string `koanf:"access"`
}

// StorageConfig configures persistence of retained messages and persistent
// sessions.
type StorageConfig struct {
	// Path is storage.path: a bbolt file. Empty (default) keeps state in
	// memory only: retained messages and sessions are lost on restart.
	Path string `koanf:"path"`
}

// DefaultConfig returns the built-in defaults; configs/default.yaml states
// the same values (a test checks it).
func DefaultConfig() Config {
	return Config{
		Node: NodeConfig{Name: ""},
		Log:  LogConfig{Level: "info", Format: "text"},
		MQTT: MQTTConfig{
			Listeners:         []ListenerConfig{{Type: "tcp", Address: ":1883"}},
			MaxPacketSize:     1 << 20,
			ServerKeepAlive:   0,
			ConnectTimeout:    10 * time.Second,
			MaxConnections:    0,
			MaxConnectRate:    0,
			MaxQueuedMessages: 8192,
			MaxInflight:       8192,
			ReceiveMaximum:    1024,
			MaxSessionExpiry:  0,
			MaxMessageExpiry:  24 * time.Hour,
			SysInterval:       10 * time.Second,
		},
		Admin:   AdminConfig{Address: "127.0.0.1:8080"},
		Auth:    AuthConfig{AllowAnonymous: true, Users: []UserConfig{}, ACL: []ACLRule{}},
		Storage: StorageConfig{},
		Cluster: cluster.DefaultConfig(),
		Plugins: plugins.DefaultConfig(),
	}
}

// KeyError is a configuration error tied to one key.
type KeyError struct {
	Key string // dotted key, e.g. mqtt.listeners[0].cert_file
	Msg string // what is wrong and how to fix it
}

func (e *KeyError) Error() string { return e.Key + ": " + e.Msg }

func keyErr(key, format string, args ...any) error {
	return &KeyError{Key: key, Msg: fmt.Sprintf(format, args...)}
}

// Validate checks values and combinations, fills derived defaults (node
// name) and returns every problem found, each naming its key.
func (c *Config) Validate() error {
	var errs []error
	if c.Node.Name == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			errs = append(errs, keyErr("node.name", "empty and the host name is unknown; set node.name"))
		}
		c.Node.Name = h
	}
	if strings.ContainsAny(c.Node.Name, " /\t\n") {
		errs = append(errs, keyErr("node.name", "%q contains a space or slash; use letters, digits, '-', '_' or '.'", c.Node.Name))
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, keyErr("log.level", "%q is not one of debug, info, warn, error", c.Log.Level))
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		errs = append(errs, keyErr("log.format", "%q is not one of text, json", c.Log.Format))
	}
	if len(c.MQTT.Listeners) == 0 {
		errs = append(errs, keyErr("mqtt.listeners", "no listener configured; add at least {type: tcp, address: \":1883\"}"))
	}
	seen := map[string]bool{}
	for i, l := range c.MQTT.Listeners {
		key := fmt.Sprintf("mqtt.listeners[%d]", i)
		switch l.Type {
		case "tcp", "ws":
			if l.CertFile != "" || l.KeyFile != "" || l.ClientCAFile != "" {
				errs = append(errs, keyErr(key+".cert_file", "certificates are only used by type tls; remove them or set type: tls"))
			}
		case "tls":
			for _, f := range []struct{ k, v string }{{"cert_file", l.CertFile}, {"key_file", l.KeyFile}} {
				if f.v == "" {
					errs = append(errs, keyErr(key+"."+f.k, "required for a tls listener"))
				} else if _, err := os.Stat(f.v); err != nil {
					errs = append(errs, keyErr(key+"."+f.k, "cannot read %s: %v", f.v, err))
				}
			}
			if l.ClientCAFile != "" {
				if _, err := os.Stat(l.ClientCAFile); err != nil {
					errs = append(errs, keyErr(key+".client_ca_file", "cannot read %s: %v", l.ClientCAFile, err))
				}
			}
		default:
			errs = append(errs, keyErr(key+".type", "%q is not one of tcp, tls, ws", l.Type))
		}
		if _, _, err := net.SplitHostPort(l.Address); err != nil {
			errs = append(errs, keyErr(key+".address", "%q is not host:port (%v)", l.Address, err))
		}
		if _, port, _ := net.SplitHostPort(l.Address); port != "0" {
			// Port 0 picks a free port per listener, so only fixed ports clash.
			if seen[l.Address] {
				errs = append(errs, keyErr(key+".address", "%q is used by another listener", l.Address))
			}
			seen[l.Address] = true
		}
	}
	if c.MQTT.MaxPacketSize != 0 && c.MQTT.MaxPacketSize < 64 {
		errs = append(errs, keyErr("mqtt.max_packet_size", "%d bytes is too small for a CONNECT; use >= 64 (or 0 for the protocol maximum)", c.MQTT.MaxPacketSize))
	}
	if ka := c.MQTT.ServerKeepAlive; ka < 0 || ka > math.MaxUint16*time.Second || ka%time.Second != 0 {
		errs = append(errs, keyErr("mqtt.server_keep_alive", "%v is not whole seconds between 0s (off) and 65535s, e.g. 60s", ka))
	}
	if c.MQTT.ConnectTimeout <= 0 {
		errs = append(errs, keyErr("mqtt.connect_timeout", "must be > 0 (e.g. 10s)"))
	}
	if c.MQTT.MaxConnections < 0 {
		errs = append(errs, keyErr("mqtt.max_connections", "must be >= 0 (0 = unlimited)"))
	}
	if c.MQTT.MaxConnectRate < 0 {
		errs = append(errs, keyErr("mqtt.max_connect_rate", "must be >= 0 (0 = unlimited)"))
	}
	if c.MQTT.MaxQueuedMessages <= 0 {
		errs = append(errs, keyErr("mqtt.max_queued_messages", "must be > 0"))
	}
	if c.MQTT.MaxInflight == 0 {
		errs = append(errs, keyErr("mqtt.max_inflight", "must be > 0"))
	}
	if c.MQTT.ReceiveMaximum == 0 {
		errs = append(errs, keyErr("mqtt.receive_maximum", "must be > 0"))
	}
	if c.MQTT.MaxSessionExpiry < 0 || c.MQTT.MaxMessageExpiry < 0 {
		errs = append(errs, keyErr("mqtt.max_session_expiry", "durations must be >= 0"))
	}
	if c.MQTT.SysInterval < time.Second {
		errs = append(errs, keyErr("mqtt.sys_interval", "must be >= 1s"))
	}
	errs = append(errs, c.Admin.validate()...)
	users := map[string]bool{}
	for i, u := range c.Auth.Users {
		key := fmt.Sprintf("auth.users[%d]", i)
		if u.Username == "" {
			errs = append(errs, keyErr(key+".username", "empty"))
		}
		if users[u.Username] {
			errs = append(errs, keyErr(key+".username", "%q appears twice", u.Username))
		}
		users[u.Username] = true
		if !strings.HasPrefix(u.PasswordHash, "$2") {
			errs = append(errs, keyErr(key+".password_hash", "not a bcrypt hash (want $2a$/$2b$/$2y$...); create one with `mendmq passwd`"))
		}
	}
	for i, r := range c.Auth.ACL {
		key := fmt.Sprintf("auth.acl[%d]", i)
		switch r.Access {
		case "read", "write", "readwrite", "deny":
		default:
			errs = append(errs, keyErr(key+".access", "%q is not one of read, write, readwrite, deny", r.Access))
		}
		if err := ValidFilter(r.Filter); err != nil {
			errs = append(errs, keyErr(key+".filter", "%v", err))
		}
	}
	if err := c.Cluster.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Storage.Path == "" {
		for name, mc := range c.Plugins.Maps {
			if mc.MapStore != nil && *mc.MapStore != "" {
				errs = append(errs, keyErr("maps."+name+".map_store", "%q needs storage.path (the map store is kept beside it); set storage.path or remove the key", *mc.MapStore))
			}
		}
	}
	if c.Cluster.Enabled && c.Plugins.MapsInUse == nil {
		// The partitioned maps run with the cluster, and a map is
		// created on first use: any maps.<name> may be used.
		c.Plugins.MapsInUse = plugins.AnyMap
	}
	if err := c.Plugins.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ValidFilter reports whether f is a well-formed MQTT topic filter
// ([MQTT-4.7.1-1], [MQTT-4.7.1-2]).
func ValidFilter(f string) error {
	if f == "" {
		return errors.New("empty topic filter")
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return fmt.Errorf("filter %q: '#' must be the whole last level", f)
		}
		if strings.Contains(l, "+") && l != "+" {
			return fmt.Errorf("filter %q: '+' must be a whole level", f)
		}
	}
	return nil
}

// validate checks admin.*: the files it names, and that an admin server
// reachable from other hosts authenticates its requests.
func (a *AdminConfig) validate() []error {
	var errs []error
	if a.Address == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(a.Address)
	if err != nil {
		return []error{keyErr("admin.address", "%q is not host:port (%v); empty disables the admin server", a.Address, err)}
	}
	if a.TokenFile != "" {
		if tok, err := os.ReadFile(a.TokenFile); err != nil {
			errs = append(errs, keyErr("admin.token_file", "cannot read %s: %v", a.TokenFile, err))
		} else if n := len(strings.TrimSpace(string(tok))); n < MinAdminTokenLen {
			errs = append(errs, keyErr("admin.token_file", "%s holds a %d-byte token; use at least %d bytes, e.g. `head -c 32 /dev/urandom | base64 > %s`",
				a.TokenFile, n, MinAdminTokenLen, a.TokenFile))
		}
	}
	t := a.TLS
	if (t.CertFile == "") != (t.KeyFile == "") {
		errs = append(errs, keyErr("admin.tls.cert_file", "admin.tls.cert_file and admin.tls.key_file go together; set both or neither"))
	}
	if t.ClientCAFile != "" && t.CertFile == "" {
		errs = append(errs, keyErr("admin.tls.client_ca_file", "mutual TLS needs the server's own certificate; set admin.tls.cert_file and admin.tls.key_file too"))
	}
	for _, f := range []struct{ k, v string }{{"cert_file", t.CertFile}, {"key_file", t.KeyFile}, {"client_ca_file", t.ClientCAFile}} {
		if f.v == "" {
			continue
		}
		if _, err := os.Stat(f.v); err != nil {
			errs = append(errs, keyErr("admin.tls."+f.k, "cannot read %s: %v", f.v, err))
		}
	}
	if !isLoopbackHost(host) && a.TokenFile == "" && t.ClientCAFile == "" {
		errs = append(errs, keyErr("admin.address", "%q is not a loopback address, and without authentication anyone who reaches it "+
			"could kick sessions, delete retained messages and reconfigure the cluster; set admin.token_file (a bearer token) "+
			"or admin.tls.client_ca_file (mutual TLS), or bind the admin server to 127.0.0.1", a.Address))
	}
	return errs
}

// isLoopbackHost reports whether host (from admin.address) only accepts
// connections from this machine: "localhost" or a loopback IP. An empty
// host or 0.0.0.0 listens on every interface.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
