package replica

import (
	"fmt"
	"math/bits"
	"time"
)

// Config configures a Store.
type Config struct {
	// Node is this node's id, as known to the cluster. Required. It is the
	// origin of every version this store writes; two live stores must never
	// share one.
	Node string

	// Buckets is the number of anti-entropy buckets per table: a power of
	// two, 1..65536. Default 1024. Every node of a cluster must use the
	// same value (Diff refuses digests of another size). More buckets make
	// the digest bigger (up to 12 bytes per non-empty bucket per table) and
	// a repair smaller: one missed key re-sends about keys/Buckets entries.
	Buckets int

	// TombstoneGrace is how long a deleted key's tombstone is kept before
	// GC drops it. Default 24h. A peer partitioned away for longer can
	// resurrect the deleted value at heal; a longer grace costs memory
	// (about 100 bytes per deleted key) and digest work.
	TombstoneGrace time.Duration

	// Resolvers maps a table name to the Resolver of its concurrent
	// versions. Tables without an entry use DefaultResolver.
	Resolvers map[string]Resolver

	// DefaultResolver resolves tables absent from Resolvers and Deferred.
	// Default LatestWins.
	DefaultResolver Resolver

	// Deferred names the tables whose conflicts the caller resolves
	// outside the Store: Apply does not call a resolver for them but
	// reports the key as pending (Update.Pending), keeps its previous
	// resolved value meanwhile, and the caller resolves it with Conflict
	// and Resolve. For resolvers that must not run while the caller holds
	// the lock that serializes the Store (a WASM merge policy, which may
	// take up to its call timeout).
	Deferred map[string]bool
}

// DefaultConfig returns the defaults; the caller sets Node.
func DefaultConfig() Config {
	return Config{
		Buckets:         1024,
		TombstoneGrace:  24 * time.Hour,
		DefaultResolver: LatestWins,
	}
}

// Validate reports the first invalid field, naming its key and the fix.
func (c Config) Validate() error {
	switch {
	case c.Node == "":
		return fmt.Errorf("replica: Node is empty: set it to this node's cluster id")
	case len(c.Node) > maxNodeLen:
		return fmt.Errorf("replica: Node is %d bytes: use an id of at most %d bytes", len(c.Node), maxNodeLen)
	case c.Buckets < 1 || c.Buckets > maxBuckets || bits.OnesCount(uint(c.Buckets)) != 1:
		return fmt.Errorf("replica: Buckets is %d: use a power of two between 1 and %d (default 1024)", c.Buckets, maxBuckets)
	case c.TombstoneGrace <= 0:
		return fmt.Errorf("replica: TombstoneGrace is %v: use a positive duration longer than the longest partition to survive (default 24h)", c.TombstoneGrace)
	}
	for t, r := range c.Resolvers {
		if r == nil {
			return fmt.Errorf("replica: Resolvers[%q] is nil: remove the entry or set a Resolver", t)
		}
		if t == "" || len(t) > maxTableLen {
			return fmt.Errorf("replica: Resolvers has table name %q: use 1..%d bytes", t, maxTableLen)
		}
	}
	for t := range c.Deferred {
		if _, ok := c.Resolvers[t]; ok {
			return fmt.Errorf("replica: table %q is in both Resolvers and Deferred: keep one", t)
		}
		if t == "" || len(t) > maxTableLen {
			return fmt.Errorf("replica: Deferred has table name %q: use 1..%d bytes", t, maxTableLen)
		}
	}
	return nil
}

const (
	maxBuckets  = 1 << 16
	maxNodeLen  = 1024
	maxTableLen = 255
	// MaxKeyLen bounds keys (the MQTT string limit: client ids, topics).
	MaxKeyLen = 65535
)
