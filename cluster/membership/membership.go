// Package membership tracks which nodes form the cluster, on top of
// hashicorp/memberlist (SWIM gossip, failure detection).
//
// It adds what mendmq needs around memberlist:
//
//   - admission: members of another cluster (Config.ClusterName) and a
//     second node using a live member's name are refused; a node whose
//     own name is taken fails to Start (ErrNameConflict);
//   - reconnect: members that failed are re-joined periodically (serf's
//     idea), so a cluster split for longer than the failure detector's
//     timeout re-forms by itself after the network heals;
//   - a member table with Dead and Left members and local suspicion,
//     events to a consumer-owned EventHandler delivered serially from one
//     goroutine through a bounded queue, and counters (Stats);
//   - a node that left (Leave) keeps a view of itself alone;
//   - unreadable gossip input (an outsider, a wrong key) is counted
//     (Stats.BadInput) and logged rate limited, not once per packet;
//   - typed, versioned node metadata (NodeMeta) and a Config with
//     DefaultConfig tuned for ~1-2 s failure detection on a LAN.
//
// Membership only knows nodes; the data plane and replicated state live
// in other packages, glued together by package cluster.
package membership

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// ErrNameConflict reports that another live member uses this node's name
// at a different address. Node names must be unique; fix node.name.
var ErrNameConflict = errors.New("membership: node name already used by another member")

// ErrClusterMismatch reports that the nodes contacted belong to another
// cluster (cluster.name differs).
var ErrClusterMismatch = errors.New("membership: member belongs to another cluster")

// ErrNotRunning is returned by methods that need a started Membership.
var ErrNotRunning = errors.New("membership: not running")

// ErrLeft is returned by Join after Leave: a node that left stays alone
// until it is restarted.
var ErrLeft = errors.New("membership: this node left the cluster; restart it to join again")

// Membership is this node's membership in a cluster. Create it with New,
// then Start it; it is safe for concurrent use.
type Membership struct {
	cfg     Config
	handler EventHandler
	log     *slog.Logger

	// lookupIP resolves seed host names; tests replace it.
	lookupIP func(ctx context.Context, host string) ([]net.IPAddr, error)

	events *eventQueue
	// bridge receives memberlist's log lines and counts unreadable
	// gossip input (Stats.BadInput).
	bridge *logBridge

	mu          sync.Mutex
	table       *table
	meta        NodeMeta
	ml          *memberlist.Memberlist
	started     bool
	left        bool
	stopped     bool
	conflict    error // first name conflict about the local node
	mismatch    error // first cluster mismatch seen while joining
	refuseLog   map[string]time.Time
	extra       Stats // counters kept outside the table
	localAddr   atomic.Pointer[string]
	stop        chan struct{}
	wg          sync.WaitGroup
	shutdownErr error
}

// New validates cfg and returns a Membership that reports to handler
// (nil: events are discarded). Nothing touches the network before Start.
func New(cfg Config, handler EventHandler) (*Membership, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if handler == nil {
		handler = HandlerBase{}
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("node", cfg.NodeName)
	cfg.Seeds = append([]string(nil), cfg.Seeds...)
	cfg.SecretKey = append([]byte(nil), cfg.SecretKey...)
	cfg.Meta.App = append([]byte(nil), cfg.Meta.App...)
	return &Membership{
		cfg:       cfg,
		handler:   handler,
		log:       logger,
		lookupIP:  net.DefaultResolver.LookupIPAddr,
		events:    newEventQueue(cfg.EventQueueLen),
		bridge:    &logBridge{log: logger},
		table:     newTable(cfg.NodeName),
		meta:      cfg.Meta,
		refuseLog: make(map[string]time.Time),
		stop:      make(chan struct{}),
	}, nil
}

// DeriveKey returns the memberlist encryption key for secret: secret
// itself if it is 16, 24 or 32 bytes long, else SHA-256 of it.
func DeriveKey(secret []byte) []byte {
	switch len(secret) {
	case 0:
		return nil
	case 16, 24, 32:
		return append([]byte(nil), secret...)
	}
	sum := sha256.Sum256(secret)
	return sum[:]
}

// Start binds the gossip transport, joins Config.Seeds and starts the
// background loops. It fails if the transport cannot be bound, if a seed
// reports another live member with this node's name (ErrNameConflict),
// or if seeds were reached but all belong to another cluster
// (ErrClusterMismatch). Unreachable seeds are not an error: they are
// retried every ReconnectInterval while this node is alone. On error
// everything started is stopped again.
func (m *Membership) Start() error {
	m.mu.Lock()
	if m.started || m.stopped {
		m.mu.Unlock()
		return errors.New("membership: Start called twice")
	}
	m.started = true
	m.mu.Unlock()

	mc, err := m.memberlistConfig()
	if err != nil {
		return err
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.events.deliver(m.handler, m.stop)
	}()
	ml, err := memberlist.Create(mc)
	if err != nil {
		if m.cfg.WrapTransport != nil && m.cfg.Transport == nil {
			_ = mc.Transport.Shutdown() // bound by memberlistConfig
		}
		m.stopLoops()
		return fmt.Errorf("membership: start gossip on %s: %w", m.cfg.BindAddr, err)
	}
	local := ml.LocalNode().Address()
	m.localAddr.Store(&local)
	m.mu.Lock()
	m.ml = ml
	m.mu.Unlock()
	m.log.Info("membership started", "gossip_addr", local, "cluster", m.cfg.ClusterName, "encrypted", len(m.cfg.SecretKey) > 0)

	if len(m.cfg.Seeds) > 0 {
		n, err := m.join(m.cfg.Seeds)
		if cerr := m.startRefusal(n); cerr != nil {
			m.shutdown()
			return cerr
		}
		if n == 0 {
			m.log.Warn("no other node reachable through the seeds yet; retrying while alone", "seeds", m.cfg.Seeds, "every", m.cfg.ReconnectInterval, "err", err)
		}
	}
	m.wg.Add(1)
	go m.reconnectLoop()
	return nil
}

// startRefusal returns the error that makes Start fail after joining
// the seeds with n successes.
func (m *Membership) startRefusal(n int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.conflict != nil {
		return m.conflict
	}
	if n == 0 && m.mismatch != nil {
		return m.mismatch
	}
	return nil
}

func (m *Membership) memberlistConfig() (*memberlist.Config, error) {
	c := m.cfg
	mc := memberlist.DefaultLANConfig()
	mc.Name = c.NodeName
	if c.Transport != nil {
		mc.Transport = c.Transport
	} else {
		ip, port, err := splitIPPort(c.BindAddr, true)
		if err != nil {
			return nil, fmt.Errorf("cluster.gossip_address %q: %w", c.BindAddr, err)
		}
		if ip == "" {
			ip = "0.0.0.0"
		}
		mc.BindAddr, mc.BindPort = ip, port
		mc.AdvertisePort = port
	}
	if c.AdvertiseAddr != "" {
		ip, port, err := splitIPPort(c.AdvertiseAddr, false)
		if err != nil {
			return nil, fmt.Errorf("cluster.gossip_advertise_address %q: %w", c.AdvertiseAddr, err)
		}
		mc.AdvertiseAddr, mc.AdvertisePort = ip, port
	}
	mc.SecretKey = DeriveKey(c.SecretKey)
	mc.ProbeInterval = c.ProbeInterval
	mc.ProbeTimeout = c.ProbeTimeout
	mc.SuspicionMult = c.SuspicionMult
	mc.GossipInterval = c.GossipInterval
	mc.PushPullInterval = c.PushPullInterval
	mc.TCPTimeout = c.StreamTimeout
	// Keep gossiping to a dead member for as long as a full sync takes to
	// reach everyone, so it can refute a false death; memberlist forgets
	// it afterwards (the table and the reconnect loop do not).
	mc.GossipToTheDeadTime = max(c.PushPullInterval, 10*c.ProbeInterval)
	// Let a node restarted at a new address (a rescheduled pod) take its
	// name back as soon as its old instance is declared dead.
	mc.DeadNodeReclaimTime = c.ProbeInterval
	d := &delegates{m: m}
	mc.Delegate = d
	mc.Events = d
	mc.Alive = d
	mc.Merge = d
	mc.Conflict = d
	mc.Ping = d
	m.bridge.onSuspect = d.localSuspect // before memberlist starts logging
	mc.Logger = log.New(m.bridge, "", 0)
	if c.WrapTransport != nil {
		t, err := nodeAware(mc)
		if err != nil {
			return nil, err
		}
		mc.Transport = c.WrapTransport(t)
	}
	return mc, nil
}

// nodeAware returns mc's transport, or binds the memberlist.NetTransport
// memberlist would have created (retrying a kernel-chosen port a few
// times, as memberlist does), so that it can be wrapped.
func nodeAware(mc *memberlist.Config) (memberlist.NodeAwareTransport, error) {
	if mc.Transport != nil {
		t, ok := mc.Transport.(memberlist.NodeAwareTransport)
		if !ok {
			return nil, fmt.Errorf("membership: the configured transport %T is not a memberlist.NodeAwareTransport and cannot be wrapped", mc.Transport)
		}
		return t, nil
	}
	nc := &memberlist.NetTransportConfig{BindAddrs: []string{mc.BindAddr}, BindPort: mc.BindPort, Logger: mc.Logger}
	tries := 1
	if mc.BindPort == 0 {
		tries = 10
	}
	var err error
	for range tries {
		var nt *memberlist.NetTransport
		if nt, err = memberlist.NewNetTransport(nc); err == nil {
			return nt, nil
		}
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, fmt.Errorf("membership: bind gossip transport on %s: %w", net.JoinHostPort(mc.BindAddr, fmt.Sprint(mc.BindPort)), err)
}

// Join contacts the given "host[:port]" addresses (host names resolve
// to all their addresses) and merges their clusters into this node's.
// It returns how many nodes were contacted; the error is nil if any was.
// A refusal for a name conflict or another cluster is reported with
// ErrNameConflict or ErrClusterMismatch.
func (m *Membership) Join(addrs []string) (int, error) {
	for _, s := range addrs {
		if _, _, err := splitSeed(s, 7946); err != nil {
			return 0, fmt.Errorf("membership: join %q: %w", s, err)
		}
	}
	m.mu.Lock()
	running := m.ml != nil && !m.stopped
	left := m.left
	m.conflict, m.mismatch = nil, nil
	m.mu.Unlock()
	if left {
		return 0, ErrLeft
	}
	if !running {
		return 0, ErrNotRunning
	}
	n, err := m.join(addrs)
	if cerr := m.startRefusal(n); cerr != nil {
		return n, cerr
	}
	return n, err
}

// join resolves addrs and joins them through memberlist.
func (m *Membership) join(addrs []string) (int, error) {
	m.mu.Lock()
	ml := m.ml
	m.mu.Unlock()
	// The local port comes from the address stored at Start: reading
	// ml.LocalNode() races with Leave, which rewrites the local node.
	port := 0
	if p := m.localAddr.Load(); p != nil {
		if _, ps, err := net.SplitHostPort(*p); err == nil {
			port, _ = strconv.Atoi(ps)
		}
	}
	targets := m.resolve(addrs, port)
	if len(targets) == 0 {
		return 0, errors.New("membership: no address to join (seeds did not resolve or are this node)")
	}
	n, err := ml.Join(targets)
	if err != nil {
		err = fmt.Errorf("membership: join %v: %w", targets, err)
	}
	return n, err
}

// resolve turns "host[:port]" seeds into "ip:port" targets: a host name
// yields all its A/AAAA records; failures are logged and skipped; this
// node's own address is dropped.
func (m *Membership) resolve(seeds []string, defPort int) []string {
	self := ""
	if p := m.localAddr.Load(); p != nil {
		self = *p
	}
	seen := make(map[string]bool)
	var out []string
	add := func(ip string, port int) {
		hp := net.JoinHostPort(ip, strconv.Itoa(port))
		if hp != self && !seen[hp] {
			seen[hp] = true
			out = append(out, hp)
		}
	}
	for _, s := range seeds {
		host, port, err := splitSeed(s, defPort)
		if err != nil {
			m.log.Warn("skipping malformed seed", "seed", s, "err", err)
			continue
		}
		if ip := net.ParseIP(host); ip != nil {
			add(ip.String(), port)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), m.cfg.StreamTimeout)
		ips, err := m.lookupIP(ctx, host)
		cancel()
		if err != nil || len(ips) == 0 {
			m.log.Warn("seed did not resolve; skipping it", "seed", s, "err", err)
			continue
		}
		for _, ip := range ips {
			add(ip.IP.String(), port)
		}
	}
	return out
}

// LocalName returns this node's name.
func (m *Membership) LocalName() string { return m.cfg.NodeName }

// Members returns all known members, this node included, sorted by name:
// Alive and Suspect ones, and Dead and Left ones until they are removed
// (Forget, ReconnectTimeout). The slice and its Members are copies.
func (m *Membership) Members() []Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.table.members()
}

// Member returns the named member, if known.
func (m *Membership) Member(name string) (Member, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.table.lookup(name)
}

// UpdateMeta replaces this node's metadata and announces it, waiting up
// to Config.StreamTimeout for the broadcast to go out.
func (m *Membership) UpdateMeta(meta NodeMeta) error {
	if err := checkMeta(m.cfg.ClusterName, meta); err != nil {
		return err
	}
	meta.App = append([]byte(nil), meta.App...)
	m.mu.Lock()
	m.meta = meta
	ml := m.ml
	stopped := m.stopped
	m.mu.Unlock()
	if ml == nil || stopped {
		return ErrNotRunning
	}
	if err := ml.UpdateNode(m.cfg.StreamTimeout); err != nil {
		return fmt.Errorf("membership: announce metadata: %w", err)
	}
	return nil
}

// Leave announces that this node leaves the cluster on purpose; members
// then see it Left and do not re-join it. It takes two broadcasts (a
// leave flag in the metadata, then memberlist's leave notice), each
// waited for up to timeout. It stops the reconnect loop; call Shutdown
// afterwards.
//
// Afterwards this node's view holds only itself, as Left: the other
// members are dropped without MemberRemove events (the consumer, which
// asked for the leave, detaches from them itself), memberlist's later
// news about them is ignored, and Join fails with ErrLeft. A node that
// left is alone until it is restarted.
func (m *Membership) Leave(timeout time.Duration) error {
	m.mu.Lock()
	ml := m.ml
	if ml == nil || m.stopped {
		m.mu.Unlock()
		return ErrNotRunning
	}
	m.left = true
	m.mu.Unlock()
	// Announce the leave flag first, so members record this node as Left
	// rather than Dead when the leave notice arrives.
	if err := ml.UpdateNode(timeout); err != nil {
		m.log.Warn("leave flag not announced in time; some members may see this node fail", "err", err)
	}
	// Gossip may deliver the leave notice to a member before the flag
	// (each broadcast reaches a few random members per round), and that
	// member would then record a failure. A direct, reliable (TCP)
	// notice to every member closes that race.
	m.noticeLeaving(ml, timeout)
	err := ml.Leave(timeout)
	m.mu.Lock()
	m.table.isolate(time.Now())
	m.mu.Unlock()
	if err != nil {
		return fmt.Errorf("membership: leave: %w", err)
	}
	return nil
}

// noticeLeaving sends the leave notice to every other alive member over
// memberlist's reliable channel, in parallel, waiting at most timeout.
// A member it does not reach may record this node as failed.
func (m *Membership) noticeLeaving(ml *memberlist.Memberlist, timeout time.Duration) {
	msg := encodeLeavingNotice(m.cfg.NodeName)
	var wg sync.WaitGroup
	// The addresses come from this package's table: the *Node values
	// ml.Members returns are memberlist's own, which it rewrites under a
	// lock of its own as alive messages arrive (a data race to read).
	for _, mem := range m.Members() {
		if mem.Name == m.cfg.NodeName || (mem.State != Alive && mem.State != Suspect) {
			continue
		}
		host, port, err := net.SplitHostPort(mem.GossipAddr)
		p, perr := strconv.Atoi(port)
		ip := net.ParseIP(host)
		if err != nil || perr != nil || ip == nil {
			m.log.Warn("leave notice not sent: member address unreadable", "member", mem.Name, "addr", mem.GossipAddr)
			continue
		}
		n := &memberlist.Node{Name: mem.Name, Addr: ip, Port: uint16(p)}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := ml.SendReliable(n, msg); err != nil {
				m.log.Warn("leave notice not delivered; the member may see this node fail", "member", n.Name, "err", err)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		m.log.Warn("leave notices not all delivered in time", "timeout", timeout)
	}
}

// Forget drops a Dead or Left member: it is no longer re-joined or listed
// and MemberRemove is delivered. Alive and Suspect members cannot be
// forgotten (ErrMemberAlive); unknown names give ErrUnknownMember. If the
// member comes back by itself later it joins again as a new member.
func (m *Membership) Forget(name string) error {
	m.mu.Lock()
	evs, err := m.table.forget(name)
	m.mu.Unlock()
	if err != nil {
		return err
	}
	m.log.Info("forgot member", "member", name)
	m.emit(evs)
	return nil
}

// Stats returns the current counters and gauges.
func (m *Membership) Stats() Stats {
	m.mu.Lock()
	s := m.table.stats()
	x := m.extra
	m.mu.Unlock()
	s.ReconnectAttempts = x.ReconnectAttempts
	s.SeedJoinAttempts = x.SeedJoinAttempts
	s.RefusedJoins = x.RefusedJoins
	s.NameConflicts = x.NameConflicts
	s.EventsDropped = m.events.droppedCount()
	s.BadInput = m.bridge.badCount()
	return s
}

// Shutdown stops gossip and the background loops without announcing a
// leave (members will see this node fail; call Leave first for a
// graceful exit). Pending events are discarded. Safe to call more than
// once; it must not be called from an EventHandler method.
func (m *Membership) Shutdown() error {
	m.mu.Lock()
	if m.stopped {
		err := m.shutdownErr
		m.mu.Unlock()
		return err
	}
	m.mu.Unlock()
	return m.shutdown()
}

func (m *Membership) shutdown() error {
	m.mu.Lock()
	m.stopped = true
	ml := m.ml
	m.mu.Unlock()
	var err error
	if ml != nil {
		if err = ml.Shutdown(); err != nil {
			err = fmt.Errorf("membership: shutdown: %w", err)
		}
	}
	m.stopLoops()
	m.mu.Lock()
	m.shutdownErr = err
	m.mu.Unlock()
	return err
}

func (m *Membership) stopLoops() {
	m.mu.Lock()
	m.stopped = true
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	m.mu.Unlock()
	m.wg.Wait()
}

func (m *Membership) emit(evs []event) {
	if n := m.events.push(evs...); n > 0 {
		m.log.Error("membership events dropped: handler is too slow; consumers should re-read Members", "dropped", n)
	}
}

// reconnectParallelism bounds the re-joins of one reconnect round in
// flight.
const reconnectParallelism = 8

// reconnectLoop re-joins failed members and, while alone, the seeds.
func (m *Membership) reconnectLoop() {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.ReconnectInterval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case now := <-t.C:
			m.reconnectRound(now)
		}
	}
}

func (m *Membership) reconnectRound(now time.Time) {
	m.mu.Lock()
	removed := m.table.reap(now, m.cfg.ReconnectTimeout)
	var due []Member
	alone := false
	if !m.left && !m.stopped {
		due = m.table.dueReconnects(now, m.cfg.ReconnectInterval)
		alone = !m.table.othersAlive() && len(m.cfg.Seeds) > 0
	}
	ml := m.ml
	m.mu.Unlock()
	for _, r := range removed {
		m.log.Info("forgetting member after reconnect timeout", "member", r.m.Name, "state", r.m.State, "timeout", m.cfg.ReconnectTimeout)
	}
	m.emit(removed)
	// The joins run reconnectParallelism at a time: one after the other,
	// a round over the far side of a big split waits for each dial to an
	// unreachable member to time out before the next, and after the heal
	// each failed member refutes its death only when it hears of it.
	sem := make(chan struct{}, reconnectParallelism)
	var wg sync.WaitGroup
	for _, d := range due {
		select {
		case <-m.stop:
			wg.Wait()
			return
		case sem <- struct{}{}:
		}
		m.mu.Lock()
		cur, known := m.table.lookup(d.Name)
		back := known && (cur.State == Alive || cur.State == Suspect)
		if !back {
			m.extra.ReconnectAttempts++
		}
		m.mu.Unlock()
		if back {
			// An earlier join of this round brought it back (a join's
			// state exchange tells about every member of the other
			// side): joining it again costs a full state exchange.
			<-sem
			continue
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if _, err := ml.Join([]string{d.GossipAddr}); err != nil {
				m.log.Debug("reconnect to failed member did not succeed", "member", d.Name, "addr", d.GossipAddr, "err", err)
			} else {
				m.log.Info("reconnected to failed member", "member", d.Name, "addr", d.GossipAddr)
			}
		}()
	}
	wg.Wait()
	if alone {
		m.mu.Lock()
		m.extra.SeedJoinAttempts++
		m.mu.Unlock()
		if n, err := m.join(m.cfg.Seeds); n > 0 {
			m.log.Info("joined seeds", "contacted", n)
		} else {
			m.log.Debug("seeds still unreachable", "err", err)
		}
	}
}

// refused counts and logs (at most once a minute per member) a refused
// member.
func (m *Membership) refused(name, reason string, conflict bool) {
	now := time.Now()
	m.mu.Lock()
	m.extra.RefusedJoins++
	if conflict {
		m.extra.NameConflicts++
	}
	last, seen := m.refuseLog[name]
	logIt := !seen || now.Sub(last) >= time.Minute
	if logIt {
		if len(m.refuseLog) > 1024 {
			clear(m.refuseLog)
		}
		m.refuseLog[name] = now
	}
	m.mu.Unlock()
	if logIt {
		m.log.Error("refused member", "member", name, "reason", reason)
	}
}
