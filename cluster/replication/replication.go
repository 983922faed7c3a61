// Package replication drives a node's replica.Store: it applies local
// writes and peers' deltas under one lock, broadcasts what changed over the
// data plane, repairs what broadcasts missed by digest anti-entropy, and
// resolves the conflicts of merged tables (retained messages) through a
// merge.Merger outside that lock.
//
// The algorithms (version vectors, digests, resolution) are package
// replica's; this package is the thin driver that moves their inputs and
// outputs. Consumers read a table's resolved values and are told about
// changes with Watch.
//
// # Locking
//
// One mutex serializes the store. Watchers run under it, in the order of
// changes, and must be quick. Nothing else runs under it: no data-plane
// call, no merge policy. A merged table's conflicts are reported pending
// by the store (replica Deferred tables) and queued; a worker reads each
// conflict under the lock, releases it, folds the conflict through the
// Merger in batches (merge.Merger.MergeBatch), and installs the results
// under the lock again, discarding those whose key changed meanwhile (the
// change queued the key again).
package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mendmq/mendmq/cluster/dataplane"
	"github.com/mendmq/mendmq/cluster/merge"
	"github.com/mendmq/mendmq/cluster/replica"
)

// Data-plane messages of replication (cluster protocol).
const (
	// FrameDeltas carries replica.AppendDeltas: a broadcast or a repair.
	FrameDeltas uint8 = 1
	// CallDigest: a replica digest -> the differing bucket sets and the
	// answering node's entries in them (anti-entropy).
	CallDigest uint8 = 11
	// CallApply: replica.AppendDeltas -> empty, once applied
	// (synchronous replication).
	CallApply uint8 = 14
)

// chunk is the most deltas sent in one frame (repairs, synchronous
// replication): far below the frame size for the tables' keys.
const chunk = 2048

// Transport is what replication needs from the data plane.
type Transport interface {
	Send(peer string, typ uint8, payload []byte) error
	SendWait(ctx context.Context, peer string, typ uint8, payload []byte) error
	Call(ctx context.Context, peer string, typ uint8, payload []byte) ([]byte, error)
}

// Peers names the members deltas go to.
type Peers interface {
	// AlivePeers returns the routable members but this node.
	AlivePeers() []string
}

// Watcher is told about a change of a key's resolved value; remote is set
// when the change came from a peer (a delta, or a resolution of a
// conflict). It runs under the replication lock, in change order: it must
// be quick and must not call the Replicator.
type Watcher func(c replica.Change, remote bool)

// Merged describes a table whose conflicts a merge policy decides.
type Merged struct {
	// Table is the replicated table ("ret").
	Table string
	// MapName is the policy's map name ("$retained").
	MapName string
	// View builds what the policy sees of a version.
	View func(key string, s replica.Sibling) merge.EntryView
	// Decide turns the policy's result into the version that wins.
	Decide func(key string, existing, merging replica.Sibling, r merge.Result) replica.Sibling
	// Direct, if set, decides a step without the policy (ok true), e.g.
	// when a tombstone is involved.
	Direct func(key string, existing, merging replica.Sibling) (replica.Sibling, bool)
}

// Config configures a Replicator.
type Config struct {
	// Node is this node's name.
	Node string
	// AntiEntropyInterval is how often a digest is exchanged with one
	// random peer (cluster.anti_entropy_interval).
	AntiEntropyInterval time.Duration
	// TombstoneGrace is cluster.tombstone_grace (replica.Config).
	TombstoneGrace time.Duration
	// Merger decides the conflicts of the Merged tables. Required if
	// Merged is not empty.
	Merger merge.Merger
	// Merged lists the tables decided by the Merger.
	Merged []Merged
	// Resolvers decide the conflicts of other tables inside Apply (pure,
	// quick functions; replica.Config.Resolvers). Tables in neither
	// Resolvers nor Merged use replica.LatestWins.
	Resolvers map[string]replica.Resolver
	// MergeTimeout bounds one MergeBatch call. Default 30s.
	MergeTimeout time.Duration
	// Logger carries the node attribute.
	Logger *slog.Logger
}

// Replicator is the replication driver of one node.
type Replicator struct {
	cfg    Config
	log    *slog.Logger
	tr     Transport
	peers  Peers
	merged map[string]Merged

	mu       sync.Mutex
	store    *replica.Store
	watchers map[string][]Watcher

	// Conflicts waiting for the merge worker.
	pendMu   sync.Mutex
	pending  map[tableKey]struct{}
	pendKick chan struct{}

	lag     *prometheus.HistogramVec
	lastLag atomic.Int64 // ms, of the last broadcast delta that changed a value

	synced   chan struct{}
	syncOnce sync.Once
	running  atomic.Bool

	stats Stats
}

type tableKey struct{ table, key string }

// Stats are replication counters.
type Stats struct {
	DeltasSent, DeltasApplied        atomic.Uint64
	AERounds, AERepaired, AEFailures atomic.Uint64
	BadMessages                      atomic.Uint64
	// Merges counts conflicts resolved through the Merger,
	// MergeRetries those queued again after the Merger failed.
	Merges, MergeRetries atomic.Uint64
}

// New returns a Replicator over an empty store and registers its messages
// on mux.
func New(cfg Config, tr Transport, peers Peers, mux *dataplane.Mux) (*Replicator, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MergeTimeout <= 0 {
		cfg.MergeTimeout = 30 * time.Second
	}
	rc := replica.DefaultConfig()
	rc.Node = cfg.Node
	rc.TombstoneGrace = cfg.TombstoneGrace
	rc.Resolvers = cfg.Resolvers
	r := &Replicator{cfg: cfg, log: cfg.Logger, tr: tr, peers: peers, merged: map[string]Merged{},
		watchers: map[string][]Watcher{}, pending: map[tableKey]struct{}{}, pendKick: make(chan struct{}, 1),
		synced: make(chan struct{})}
	if len(cfg.Merged) > 0 {
		if cfg.Merger == nil {
			return nil, errors.New("replication: Merged tables need a Merger")
		}
		rc.Deferred = map[string]bool{}
		for _, m := range cfg.Merged {
			rc.Deferred[m.Table] = true
			r.merged[m.Table] = m
		}
	}
	store, err := replica.New(rc)
	if err != nil {
		return nil, fmt.Errorf("create replica store: %w", err)
	}
	// A first clock reading: a store without one defers writing back
	// resolved conflicts (its dots could repeat an earlier incarnation's).
	store.GC(time.Now())
	r.store = store
	r.lag = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "mendmq_cluster_replication_lag_seconds",
		Help:    "Time from a replicated write on its node to its application here, per path (broadcast delta or anti-entropy repair); across hosts it includes their clock offset.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
	}, []string{"path"})
	if mux != nil {
		err = errors.Join(
			mux.HandleFrameFunc(FrameDeltas, r.handleDeltas),
			mux.HandleCallFunc(CallDigest, false, r.answerDigest),
			mux.HandleCallFunc(CallApply, false, r.handleApply),
		)
		if err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Watch adds a watcher of table's changes. Call before Start.
func (r *Replicator) Watch(table string, w Watcher) {
	r.mu.Lock()
	r.watchers[table] = append(r.watchers[table], w)
	r.mu.Unlock()
}

// Stats returns the counters.
func (r *Replicator) Stats() *Stats { return &r.stats }

// Lag is the replication lag histogram (a Prometheus collector).
func (r *Replicator) Lag() *prometheus.HistogramVec { return r.lag }

// LastLag is the lag of the last broadcast delta that changed a value.
func (r *Replicator) LastLag() time.Duration {
	return time.Duration(r.lastLag.Load()) * time.Millisecond
}

// Run runs anti-entropy every AntiEntropyInterval, tombstone GC every
// minute and the merge worker, until ctx ends. A node without seeds
// (first of its cluster) should call MarkSynced first.
func (r *Replicator) Run(ctx context.Context) {
	r.running.Store(true)
	defer r.running.Store(false)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.mergeLoop(ctx)
	}()
	defer wg.Wait()
	ae := time.NewTicker(r.cfg.AntiEntropyInterval)
	defer ae.Stop()
	gc := time.NewTicker(time.Minute)
	defer gc.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ae.C:
			if peers := r.peers.AlivePeers(); len(peers) > 0 {
				_, _, _ = r.AntiEntropy(ctx, peers[rand.IntN(len(peers))])
			}
		case now := <-gc.C:
			r.mu.Lock()
			r.store.GC(now)
			r.mu.Unlock()
		}
	}
}

// Stopped makes Broadcast a no-op (the node stops).
func (r *Replicator) Stopped() { r.running.Store(false) }

// MarkSynced marks the tables as the cluster's (Synced).
func (r *Replicator) MarkSynced() { r.syncOnce.Do(func() { close(r.synced) }) }

// Synced is closed once this node has the cluster's tables: after its
// first anti-entropy exchange with a peer, or MarkSynced.
func (r *Replicator) Synced() <-chan struct{} { return r.synced }

// --- local writes -------------------------------------------------------

// Put writes key's value and broadcasts it.
func (r *Replicator) Put(table, key string, value []byte, now time.Time) error {
	return r.write(table, key, value, false, now)
}

// Delete deletes key and broadcasts the tombstone.
func (r *Replicator) Delete(table, key string, now time.Time) error {
	return r.write(table, key, nil, true, now)
}

func (r *Replicator) write(table, key string, value []byte, deleted bool, now time.Time) error {
	up, err := r.writeLocal(table, key, value, deleted, now)
	if err != nil {
		return err
	}
	r.Broadcast(up.Out)
	return nil
}

func (r *Replicator) writeLocal(table, key string, value []byte, deleted bool, now time.Time) (replica.Update, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var up replica.Update
	var err error
	if deleted {
		up, err = r.store.Delete(table, key, now)
	} else {
		up, err = r.store.Put(table, key, value, now)
	}
	if err != nil {
		return up, fmt.Errorf("replicated write %s/%q: %w", table, key, err)
	}
	// Local writes are told too: a consumer may have applied a
	// concurrent remote value in between (mochi retains a client's
	// message before the cluster hook writes it here).
	if up.Changed() {
		r.notifyLocked(up.Change, false)
	}
	return up, nil
}

// Write is one key of a WriteBatch: a put of Value, or a deletion.
type Write struct {
	Key    string
	Value  []byte
	Delete bool
}

// WriteBatch writes several keys of table in one critical section and
// broadcasts them together (in frames of at most chunk deltas), so a
// periodic flush of many keys costs a few frames per peer, not one per
// key. Keys that fail to write are skipped; the error names them.
func (r *Replicator) WriteBatch(table string, ws []Write, now time.Time) error {
	var (
		out  []replica.Delta
		errs []error
	)
	r.mu.Lock()
	for _, w := range ws {
		var up replica.Update
		var err error
		if w.Delete {
			up, err = r.store.Delete(table, w.Key, now)
		} else {
			up, err = r.store.Put(table, w.Key, w.Value, now)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("replicated write %s/%q: %w", table, w.Key, err))
			continue
		}
		if up.Changed() {
			r.notifyLocked(up.Change, false)
		}
		out = append(out, up.Out...)
	}
	r.mu.Unlock()
	for len(out) > 0 {
		k := min(len(out), chunk)
		r.Broadcast(out[:k])
		out = out[k:]
	}
	return errors.Join(errs...)
}

// PutSync writes key's value and waits until every alive peer applied it
// (or ctx ends); the error names the peers that did not confirm.
func (r *Replicator) PutSync(ctx context.Context, table, key string, value []byte) error {
	up, err := r.writeLocal(table, key, value, false, time.Now())
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range r.ReplicateSync(ctx, r.peers.AlivePeers(), up.Out) {
		errs = append(errs, fmt.Errorf("replicate %s/%q to %s: not confirmed", table, key, p))
	}
	return errors.Join(errs...)
}

// DeleteWhere deletes, in one critical section (so two callers never both
// delete a key), every live key of table whose value match accepts. It
// returns the deltas to replicate (not yet sent) and how many keys it
// deleted.
func (r *Replicator) DeleteWhere(table string, match func(key string, value []byte) bool) ([]replica.Delta, int) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	var keys []string
	r.store.Range(table, func(key string, v replica.Sibling) bool {
		if match(key, v.Value) {
			keys = append(keys, key)
		}
		return true
	})
	var out []replica.Delta
	for _, k := range keys {
		up, err := r.store.Delete(table, k, now)
		if err != nil {
			r.log.Error("replicated delete", "table", table, "key", k, "error", err)
			continue
		}
		r.notifyLocked(up.Change, false)
		out = append(out, up.Out...)
	}
	return out, len(keys)
}

// Get returns key's resolved value.
func (r *Replicator) Get(table, key string) ([]byte, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.store.Get(table, key)
	if !ok {
		return nil, false
	}
	return s.Value, true
}

// Len returns the number of live keys of table.
func (r *Replicator) Len(table string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.store.Len(table)
}

// Range calls fn for every live key of table under the lock; fn must not
// call the Replicator.
func (r *Replicator) Range(table string, fn func(key string, value []byte) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.store.Range(table, func(k string, v replica.Sibling) bool { return fn(k, v.Value) })
}

// Reapply calls fn with key's resolved value under the replication lock,
// so fn is serialized with the watchers: a consumer that let its copy
// drift restores it in the right order.
func (r *Replicator) Reapply(table, key string, fn func(value []byte, ok bool)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.store.Get(table, key)
	fn(s.Value, ok)
}

func (r *Replicator) notifyLocked(c replica.Change, remote bool) {
	for _, w := range r.watchers[c.Table] {
		w(c, remote)
	}
}

// --- peers' deltas ------------------------------------------------------

// Paths by which deltas arrive (the lag histogram's label).
const (
	pathBroadcast   = "broadcast"
	pathAntiEntropy = "anti_entropy"
)

func (r *Replicator) handleDeltas(from string, payload []byte) {
	ds, err := replica.DecodeDeltas(payload)
	if err != nil {
		r.stats.BadMessages.Add(1)
		r.log.Warn("bad deltas frame", "peer", from, "error", err)
		return
	}
	r.apply(ds, pathBroadcast)
}

func (r *Replicator) handleApply(from string, payload []byte) ([]byte, error) {
	ds, err := replica.DecodeDeltas(payload)
	if err != nil {
		r.stats.BadMessages.Add(1)
		return nil, err
	}
	r.apply(ds, pathBroadcast)
	return nil, nil
}

// apply merges peers' deltas and broadcasts the write-backs.
func (r *Replicator) apply(ds []replica.Delta, path string) {
	var out []replica.Delta
	var pend []tableKey
	now := time.Now().UnixMilli()
	lag := r.lag.WithLabelValues(path)
	r.mu.Lock()
	for _, d := range ds {
		up := r.store.Apply(d)
		if up.Pending {
			pend = append(pend, tableKey{d.Table, d.Key})
		}
		out = append(out, up.Out...)
		if !up.Changed() {
			continue
		}
		r.notifyLocked(up.Change, true)
		// The writer's clock at the write (raised past what it
		// overwrote, so an upper bound of its age).
		ms := max(now-up.New.TS, 0)
		lag.Observe(float64(ms) / 1e3)
		if path == pathBroadcast {
			r.lastLag.Store(ms)
		}
	}
	r.mu.Unlock()
	r.stats.DeltasApplied.Add(uint64(len(ds)))
	r.queueConflicts(pend)
	r.Broadcast(out)
}

// Broadcast sends deltas to every alive peer. A peer that misses them
// (queue full, down) is repaired by anti-entropy.
func (r *Replicator) Broadcast(ds []replica.Delta) {
	if len(ds) == 0 || !r.running.Load() {
		return
	}
	payload := replica.AppendDeltas(nil, ds...)
	for _, p := range r.peers.AlivePeers() {
		if err := r.tr.Send(p, FrameDeltas, payload); err == nil {
			r.stats.DeltasSent.Add(uint64(len(ds)))
		}
	}
}

// ReplicateSync sends deltas to peers and waits until each has applied
// them or ctx ends. It returns the peers that did not confirm, sorted;
// anti-entropy repairs them later.
func (r *Replicator) ReplicateSync(ctx context.Context, peers []string, ds []replica.Delta) []string {
	if len(ds) == 0 || len(peers) == 0 {
		return nil
	}
	var chunks [][]byte
	for len(ds) > 0 {
		k := min(len(ds), chunk)
		chunks = append(chunks, replica.AppendDeltas(nil, ds[:k]...))
		ds = ds[k:]
	}
	var (
		wg          sync.WaitGroup
		mu          sync.Mutex
		unconfirmed []string
	)
	for _, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, c := range chunks {
				if _, err := r.tr.Call(ctx, p, CallApply, c); err != nil {
					r.log.Warn("peer did not confirm replicated writes", "peer", p, "error", err)
					mu.Lock()
					unconfirmed = append(unconfirmed, p)
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	slices.Sort(unconfirmed)
	return unconfirmed
}
