// Package broker assembles a mendmq node: the mochi MQTT server with its
// listeners and hooks (auth, metrics, storage), the admin HTTP server, and
// (when configured) the cluster. It owns start-up order and graceful
// shutdown; every concern lives in its own sub-package.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/mendmq/mendmq/broker/admin"
	"github.com/mendmq/mendmq/broker/auth"
	"github.com/mendmq/mendmq/broker/clusterhook"
	"github.com/mendmq/mendmq/broker/config"
	"github.com/mendmq/mendmq/broker/gate"
	"github.com/mendmq/mendmq/broker/limits"
	"github.com/mendmq/mendmq/broker/listener"
	"github.com/mendmq/mendmq/broker/metrics"
	"github.com/mendmq/mendmq/broker/mochix"
	"github.com/mendmq/mendmq/broker/quirks"
	"github.com/mendmq/mendmq/broker/refuse"
	"github.com/mendmq/mendmq/broker/reserved"
	"github.com/mendmq/mendmq/broker/storage"
	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/cluster/netsplit"
	"github.com/mendmq/mendmq/cluster/pmap"
	"github.com/mendmq/mendmq/plugins"
)

// Version is the mendmq version, set at build time with
// -ldflags "-X github.com/mendmq/mendmq/broker.Version=...".
var Version = "0.1.0-dev"

// storageLockTimeout bounds the wait for the storage file lock, so a second
// process on the same storage.path fails at start instead of hanging.
const storageLockTimeout = 2 * time.Second

// Broker is one mendmq node.
type Broker struct {
	cfg      config.Config
	log      *slog.Logger // with the node attribute
	baseLog  *slog.Logger // as passed to New
	server   *mqtt.Server
	registry *prometheus.Registry
	metrics  *metrics.MQTT
	admin    *admin.Server
	auth     *auth.Hook
	refuse   *refuse.Refuser
	reserved *reserved.Hook
	gate     *gate.Hook
	quirks   *quirks.Hook
	// operatorMu serializes the admin API's publishes through the
	// reserved operator client (retained deletes).
	operatorMu sync.Mutex
	store      *storage.Hook      // nil without storage.path
	chook      *clusterhook.Hooks // nil when cluster.enabled is false
	node       *cluster.Node      // nil when cluster.enabled is false
	policies   *plugins.Registry
	reload     atomic.Pointer[func() error] // re-reads the configuration sources (serve sets it)
	started    atomic.Bool
	// The hot netsplit settings (applyNetsplitConfig).
	readyzSplit  atomic.Bool
	debug        atomic.Bool  // admin.debug (hot)
	netsplitMode atomic.Value // string
	stopping     atomic.Bool
}

// New assembles a node from a validated configuration. Nothing binds until
// Start.
func New(cfg config.Config, log *slog.Logger) (*Broker, error) {
	if log == nil {
		log = slog.Default()
	}
	base := log
	log = log.With("node", cfg.Node.Name)
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = cfg.MQTT.MaxPacketSize
	if cfg.MQTT.MaxPacketSize == 0 {
		caps.MaximumPacketSize = limits.ProtocolMaxPacketSize
	}
	caps.MaximumClients = cfg.MQTT.MaxConnections
	if caps.MaximumClients == 0 {
		caps.MaximumClients = math.MaxInt64
	}
	caps.MaximumClientWritesPending = cfg.MQTT.MaxQueuedMessages
	caps.MaximumInflight = cfg.MQTT.MaxInflight
	caps.ReceiveMaximum = cfg.MQTT.ReceiveMaximum
	if cfg.MQTT.MaxSessionExpiry > 0 {
		caps.MaximumSessionExpiryInterval = uint32(min(cfg.MQTT.MaxSessionExpiry.Seconds(), math.MaxUint32))
	}
	caps.MaximumMessageExpiryInterval = int64(cfg.MQTT.MaxMessageExpiry.Seconds())

	server := mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		Logger:                 log,
		SysTopicResendInterval: int64(cfg.MQTT.SysInterval.Seconds()),
		InlineClient:           true,
	})
	b := &Broker{cfg: cfg, log: log, baseLog: base, server: server, registry: prometheus.NewRegistry()}
	b.readyzSplit.Store(cfg.Cluster.ReadyzDuringNetsplit)
	b.debug.Store(cfg.Admin.Debug)
	b.netsplitMode.Store(cfg.Cluster.NetsplitMode)
	b.metrics = metrics.New(server.Info)
	b.registry.MustRegister(b.metrics, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	if err := b.addHooks(); err != nil {
		return nil, err
	}
	reg, err := plugins.New(cfg.Plugins, log.With("component", "plugins"))
	if err != nil {
		return nil, fmt.Errorf("load merge policies: %w", err)
	}
	b.policies = reg
	b.registry.MustRegister(reg.Collectors()...)
	if cfg.Cluster.Enabled {
		if err := b.addCluster(); err != nil {
			_ = reg.Close()
			return nil, err
		}
	}
	g := listener.Guard{ConnectTimeout: cfg.MQTT.ConnectTimeout, RatePerSecond: cfg.MQTT.MaxConnectRate, Refused: b.metrics.Refused,
		CloseClients: func(id string) { mochix.DisconnectListener(server, id) },
		Wrap:         func(c net.Conn) net.Conn { return limits.Wrap(c, caps.MaximumPacketSize) }}
	for i, lc := range cfg.MQTT.Listeners {
		l, err := listener.Build(i, lc, g)
		if err != nil {
			return nil, err
		}
		if err := server.AddListener(l); err != nil {
			return nil, fmt.Errorf("start listener mqtt.listeners[%d] (%s %s): %w", i, lc.Type, lc.Address, err)
		}
	}
	if cfg.Admin.Address != "" {
		a, err := admin.New(admin.Options{
			Address: cfg.Admin.Address, TokenFile: cfg.Admin.TokenFile,
			CertFile: cfg.Admin.TLS.CertFile, KeyFile: cfg.Admin.TLS.KeyFile, ClientCAFile: cfg.Admin.TLS.ClientCAFile,
			Registry: b.registry, Ready: b.Ready, Log: log.With("component", "admin"),
		})
		if err != nil {
			_ = reg.Close()
			return nil, err
		}
		b.admin = a
		b.mountAPI()
	}
	return b, nil
}

// addHooks adds the node's hooks in their order: the refusal helper
// first (a gate that refuses operations sits right behind it), auth,
// mochi's quirks, metrics and storage; the cluster's hooks come after
// (addCluster).
func (b *Broker) addHooks() error {
	b.refuse = refuse.New(b.server, refuse.Options{Dropped: func() { b.metrics.Dropped(metrics.ReasonNetsplit) }})
	if err := b.server.AddHook(b.refuse, nil); err != nil {
		return fmt.Errorf("add refusal hook: %w", err)
	}
	// Then the reserved namespaces: a refused CONNECT must not reach the
	// cluster hook's registration, nor a refused publish its forwarding.
	b.reserved = reserved.New(b.server, b.refuse, reserved.Options{
		Dropped: func() { b.metrics.Dropped(metrics.ReasonReservedTopic) },
		Refused: b.metrics.Refused,
	})
	if err := b.server.AddHook(b.reserved, nil); err != nil {
		return fmt.Errorf("add reserved-namespace hook: %w", err)
	}
	// Then the netsplit gate (connected to the cluster in addCluster): a
	// refused operation must reach neither the cluster hooks nor storage.
	b.gate = gate.New(gate.Options{
		Refuse:  b.refuse,
		Refused: b.metrics.Refused,
		Passes:  func(cl *mqtt.Client) bool { return cl == b.reserved.Operator() },
	}, allowDuringNetsplit(b.cfg.Cluster))
	if err := b.server.AddHook(b.gate, nil); err != nil {
		return fmt.Errorf("add netsplit gate: %w", err)
	}
	b.registry.MustRegister(b.gate.Collector())
	users := map[string]string{}
	for _, u := range b.cfg.Auth.Users {
		users[u.Username] = u.PasswordHash
	}
	var rules []auth.Rule
	for i, r := range b.cfg.Auth.ACL {
		a, err := auth.ParseAccess(r.Access)
		if err != nil {
			return fmt.Errorf("auth.acl[%d].access: %w", i, err)
		}
		rules = append(rules, auth.Rule{Username: r.Username, ClientID: r.ClientID, Filter: r.Filter, Access: a})
	}
	ah := auth.New(auth.Options{
		AllowAnonymous: b.cfg.Auth.AllowAnonymous,
		Users:          users,
		Rules:          rules,
		Denied: func(write bool) {
			if write {
				b.metrics.Dropped(metrics.ReasonNotAuthorized)
			}
		},
	})
	b.auth = ah
	if err := b.server.AddHook(ah, nil); err != nil {
		return fmt.Errorf("add auth hook: %w", err)
	}
	var store quirks.Store
	var sh *storage.Hook
	var storeOpts any
	if b.cfg.Storage.Path != "" {
		h, opts := storage.New(b.cfg.Storage.Path, storageLockTimeout)
		sh, store, storeOpts = h, h, opts
		b.store = h
	}
	// The resend order hook swaps the packets of a resend: Hook must see
	// them as they go out. The send quota must see only what Hook lets
	// through.
	b.quirks = quirks.New(b.server, store)
	if err := b.server.AddHook(b.quirks.ResendOrder(), nil); err != nil {
		return fmt.Errorf("add resend order hook: %w", err)
	}
	if err := b.server.AddHook(b.quirks, nil); err != nil {
		return fmt.Errorf("add quirks hook: %w", err)
	}
	if err := b.server.AddHook(b.quirks.SendQuota(), nil); err != nil {
		return fmt.Errorf("add send quota hook: %w", err)
	}
	if err := b.server.AddHook(quirks.NewReceiveQuota(b.server, b.cfg.MQTT.ReceiveMaximum), nil); err != nil {
		return fmt.Errorf("add receive quota hook: %w", err)
	}
	if err := b.server.AddHook(quirks.NewAcks(), nil); err != nil {
		return fmt.Errorf("add ack hook: %w", err)
	}
	lim := limits.New(b.server, limits.Options{
		ServerKeepAlive: uint16(b.cfg.MQTT.ServerKeepAlive / time.Second), // validated: whole seconds <= 65535
		MaxPacketSize:   b.server.Options.Capabilities.MaximumPacketSize,
	})
	if err := b.server.AddHook(lim, nil); err != nil {
		return fmt.Errorf("add limits hook: %w", err)
	}
	if err := b.server.AddHook(b.metrics, nil); err != nil {
		return fmt.Errorf("add metrics hook: %w", err)
	}
	if sh != nil {
		if err := b.server.AddHook(sh, storeOpts); err != nil {
			return fmt.Errorf("storage.path: open %s: %w", b.cfg.Storage.Path, err)
		}
	}
	return nil
}

// addCluster creates the cluster node and the hooks that connect it to
// mochi. The node joins in Start, before listeners accept clients.
func (b *Broker) addCluster() error {
	cc := b.cfg.Cluster
	if cc.Logger == nil {
		// membership and the data plane add the node attribute themselves.
		cc.Logger = b.baseLog
	}
	if cc.Merger == nil {
		cc.Merger = b.policies // conflicting retained messages: the $retained policy
	}
	// The partitioned maps' settings: maps.<name> (maps.default for the
	// rest), read per operation from the running configuration.
	maxBackups := 1
	for name := range b.cfg.Plugins.Maps {
		maxBackups = max(maxBackups, *b.cfg.Plugins.Settings(name).BackupCount)
	}
	cc.MapMaxBackups = maxBackups
	cc.MapConfig = func(name string) pmap.MapConfig {
		pc := b.policies.Config()
		s := pc.Settings(name)
		return pmap.MapConfig{BackupCount: *s.BackupCount, AsyncBackups: *s.AsyncBackups, MinClusterSize: *s.MinClusterSize,
			ReadQuorum: *s.ReadQuorum, ReadFromBackup: *s.ReadFromBackup, TTL: *s.TTL, MaxIdle: *s.MaxIdle, MapStore: *s.MapStore}
	}
	if b.cfg.Storage.Path != "" && cc.StoragePath == "" {
		// The cluster's own file: publishes held for unreachable nodes.
		cc.StoragePath = b.cfg.Storage.Path + ".cluster"
	}
	opts := clusterhook.Options{
		Server:          b.server,
		Metrics:         b.metrics,
		Log:             b.log,
		ForwardTimeout:  cc.ForwardTimeout,
		RegisterTimeout: cc.RegisterTimeout,
		Authenticate:    b.auth.OnConnectAuthenticate,
		Refuse:          b.refuse,
		Queue:           b.quirks,
	}
	if b.store != nil {
		opts.Store = b.store // added before the cluster hooks (addHooks)
	}
	b.chook = clusterhook.New(opts)
	node, err := cluster.New(b.cfg.Node.Name, cc, b.chook.Broker())
	if err != nil {
		return err
	}
	b.node = node
	if err := b.registerPeerCalls(); err != nil {
		return err
	}
	if d := node.Durable(); d != nil {
		// Parked conflicts survive a restart in the cluster's file.
		n, err := b.policies.SetConflictStore(conflictStore{d.Conflicts(), b.log})
		if err != nil {
			return fmt.Errorf("cluster storage %s: %w", cc.StoragePath, err)
		}
		if n > 0 {
			b.log.Warn("parked merge conflicts restored; resolve them with POST /api/v1/policies/conflicts/{node}/{id} (mendmq ctl policy conflicts resolve NODE/ID ACTION)", "conflicts", n)
		}
	}
	// Merge policies may read the MapStore copy of a key they merge.
	b.policies.SetStoreReader(mapStoreReader{node.Maps()})
	b.chook.SetCluster(node)
	b.gate.SetState(node)
	for _, h := range b.chook.List() {
		if err := b.server.AddHook(h, nil); err != nil {
			return fmt.Errorf("add cluster hook %s: %w", h.ID(), err)
		}
	}
	b.registry.MustRegister(node)
	return nil
}

// Policies is the merge-policy registry.
func (b *Broker) Policies() *plugins.Registry { return b.policies }

// SetReloader installs the function that re-reads the configuration
// sources and applies them (Reconfigure); POST /api/v1/policies/reload and
// the config-file watcher call it.
func (b *Broker) SetReloader(f func() error) { b.reload.Store(&f) }

// Reconfigure applies a new configuration to a running node. The merge
// policies (policies, maps, retained, plugins.*) change live: the new set
// is validated and built aside and swapped atomically, and on any error the
// running one stays. Other keys need a restart; changes to them are
// logged and ignored.
func (b *Broker) Reconfigure(cfg config.Config) error {
	if err := b.policies.Apply(cfg.Plugins); err != nil {
		return fmt.Errorf("apply merge policies: %w", err)
	}
	b.applyNetsplitConfig(cfg.Cluster)
	b.applyDebug(cfg.Admin.Debug)
	old, next := b.cfg, cfg
	old.Plugins, next.Plugins = plugins.Config{}, plugins.Config{}
	old.Admin.Debug, next.Admin.Debug = false, false
	for _, c := range []*cluster.Config{&old.Cluster, &next.Cluster} {
		c.Logger, c.Merger, c.MapConfig, c.Transport, c.DataNetwork = nil, nil, nil, nil, nil
		c.NetsplitMode, c.ReadyzDuringNetsplit = "", false
		c.AllowRegisterDuringNetsplit, c.AllowPublishDuringNetsplit = false, false
		c.AllowSubscribeDuringNetsplit, c.AllowUnsubscribeDuringNetsplit = false, false
	}
	if fmt.Sprintf("%+v", old) != fmt.Sprintf("%+v", next) {
		b.log.Warn("configuration changed outside the merge policies, the netsplit settings and admin.debug; those changes take effect after a restart")
	}
	b.log.Info("configuration reloaded")
	return nil
}

// applyNetsplitConfig applies the hot netsplit settings: the gate's four
// switches, cluster.netsplit_mode and cluster.readyz_during_netsplit.
func (b *Broker) applyNetsplitConfig(c cluster.Config) {
	was := b.gate.Allowed()
	now := allowDuringNetsplit(c)
	if was != now {
		b.gate.SetAllow(now)
		b.log.Info("netsplit gate switches changed", "allow_register", now.Register, "allow_publish", now.Publish,
			"allow_subscribe", now.Subscribe, "allow_unsubscribe", now.Unsubscribe)
	}
	b.readyzSplit.Store(c.ReadyzDuringNetsplit)
	if b.node != nil && c.NetsplitMode != b.netsplitMode.Load().(string) {
		mode, err := netsplit.ParseMode(c.NetsplitMode)
		if err == nil { // validated with the configuration
			b.node.SetNetsplitMode(mode)
			b.netsplitMode.Store(c.NetsplitMode)
			b.log.Info("netsplit mode changed", "mode", c.NetsplitMode)
		}
	}
}

// allowDuringNetsplit reads the gate's switches from the configuration.
func allowDuringNetsplit(c cluster.Config) gate.Allow {
	return gate.Allow{
		Register:    c.AllowRegisterDuringNetsplit,
		Publish:     c.AllowPublishDuringNetsplit,
		Subscribe:   c.AllowSubscribeDuringNetsplit,
		Unsubscribe: c.AllowUnsubscribeDuringNetsplit,
	}
}

// Cluster is the cluster node, or nil when cluster.enabled is false.
func (b *Broker) Cluster() *cluster.Node { return b.node }

// AddHook adds a mochi hook (cluster integration, tests). Call before Start.
func (b *Broker) AddHook(h mqtt.Hook, cfg any) error { return b.server.AddHook(h, cfg) }

// Server exposes the mochi server for in-process integration.
func (b *Broker) Server() *mqtt.Server { return b.server }

// Registry is the node's Prometheus registry.
func (b *Broker) Registry() *prometheus.Registry { return b.registry }

// Metrics is the node's MQTT metrics hook.
func (b *Broker) Metrics() *metrics.MQTT { return b.metrics }

// Admin is the admin server, or nil when admin.address is empty.
func (b *Broker) Admin() *admin.Server { return b.admin }

// Config is the configuration the node was built with.
func (b *Broker) Config() config.Config { return b.cfg }

// Log is the node's logger.
func (b *Broker) Log() *slog.Logger { return b.log }

// Start restores stored state, then serves MQTT and the admin API. It
// returns once every listener is bound.
func (b *Broker) Start() error {
	if b.node != nil {
		if err := b.node.Start(); err != nil {
			return fmt.Errorf("start cluster: %w", err)
		}
	}
	if err := b.server.Serve(); err != nil {
		if b.node != nil {
			_ = b.node.Stop()
		}
		return fmt.Errorf("start mqtt server: %w", err)
	}
	if b.chook != nil {
		b.chook.SyncSessions() // sessions restored from storage
	}
	if b.admin != nil {
		if err := b.admin.Start(); err != nil {
			_ = b.server.Close()
			return err
		}
	}
	b.started.Store(true)
	addrs := b.MQTTAddrs()
	b.log.Info("mendmq serving", "version", Version, "mqtt", addrs, "admin", b.AdminAddr(), "storage", b.cfg.Storage.Path)
	return nil
}

// Ready reports whether the node should receive traffic (/readyz).
func (b *Broker) Ready() error {
	switch {
	case b.stopping.Load():
		return errors.New("shutting down")
	case !b.started.Load():
		return errors.New("starting")
	case b.node != nil && !b.readyzSplit.Load() && b.node.Gated():
		// cluster.readyz_during_netsplit: false takes a gated node out
		// of a load balancer's rotation.
		return errors.New("in a netsplit (cluster.readyz_during_netsplit is false)")
	}
	return nil
}

// MQTTAddrs returns the bound address of every listener as "id=addr".
func (b *Broker) MQTTAddrs() []string {
	var out []string
	for i, lc := range b.cfg.MQTT.Listeners {
		out = append(out, fmt.Sprintf("%s%d=%s", lc.Type, i, b.ListenerAddr(i)))
	}
	return out
}

// ListenerAddr returns the bound address of listener i (mqtt.listeners[i]).
func (b *Broker) ListenerAddr(i int) string {
	lc := b.cfg.MQTT.Listeners[i]
	l, ok := b.server.Listeners.Get(fmt.Sprintf("%s%d", lc.Type, i))
	if !ok {
		return ""
	}
	return l.Address()
}

// AdminAddr is the admin server's bound address ("" if disabled).
func (b *Broker) AdminAddr() string {
	if b.admin == nil {
		return ""
	}
	return b.admin.Addr()
}

// Shutdown stops accepting connections, disconnects clients (v5: 0x8B
// server shutting down), closes storage, and stops the admin server.
func (b *Broker) Shutdown(ctx context.Context) error {
	if !b.stopping.CompareAndSwap(false, true) {
		return nil
	}
	b.log.Info("shutting down")
	// mochi closes listeners, disconnects every client with
	// ErrServerShuttingDown and then stops hooks (bolt closes its file).
	err := b.server.Close()
	if b.node != nil {
		err = errors.Join(err, b.node.Stop())
	}
	err = errors.Join(err, b.policies.Close())
	if b.admin != nil {
		err = errors.Join(err, b.admin.Shutdown(ctx))
	}
	return err
}
