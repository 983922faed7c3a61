// Package replica is the replicated key/value store behind the cluster's
// subscription ("sub") and retained-message ("ret") tables: named tables of
// opaque []byte values, one Store per node, kept convergent with dotted
// version vector sets (package dvv), broadcast deltas and digest-driven
// anti-entropy.
//
// The Store is a pure state machine in the style of etcd's raft.RawNode: no
// I/O, no goroutines, no clock (time is an argument), no randomness. Every
// mutation returns an Update: the change of the key's resolved value (for
// the caller's indices) and the deltas the caller must broadcast to peers.
// A Store is not safe for concurrent use; the driver serializes calls (one
// mutex or one goroutine).
//
// # Data model
//
// Each key holds a dvv.Set of Siblings. A Sibling is one written version:
// the writing node, its wall-clock timestamp (unix ms, never below the
// timestamps it overwrites, so it behaves like a hybrid logical clock along
// causal chains), a tombstone flag and the value bytes. A local Put or
// Delete writes with the node's full causal context, so it supersedes every
// version the node has seen; versions written concurrently elsewhere stay
// as siblings until a later write or a resolution supersedes them.
//
// Deletes are tombstones. GC(now) drops keys whose versions are all
// tombstones older than Config.TombstoneGrace, after which a peer that was
// partitioned away for longer than the grace period can resurrect a value
// it still holds: the grace period is the longest partition the store
// survives without resurrections.
//
// Dot counters are floored at the writer's wall-clock milliseconds
// (dvv.UpdateAtLeast), so a node that lost a key's counter (GC, or a
// restart with an empty store) never reissues a dot a peer still holds,
// provided its clock has passed every counter it issued before (a restart
// takes longer than the cluster's clock skew). Write-backs (below) have no
// clock argument: they are floored at the latest time the store was given
// by Put, Delete or GC, and a store given none since it started does not
// write back.
//
// # Resolution rule (convergence with arbitrary resolvers)
//
// Get, and the Old/New values of every Change, return one resolved Sibling
// per key, a pure function of the key's sibling set:
//
//  1. One sibling: it is the value.
//  2. Siblings are put in canonical order, ascending by (TS, Node, dot
//     counter); dots are unique, so the order is total and the same on
//     every node whatever order the versions arrived in.
//  3. Siblings with the same payload (tombstone flag and value bytes)
//     collapse into the last of them in canonical order. If one payload is
//     left, it is the value and no resolver runs.
//  4. Otherwise the table's Resolver folds the distinct siblings in
//     canonical order: acc = s[0]; acc = Resolve(table, key, acc, s[i]) for
//     i = 1, 2, ... ("existing" is what was kept so far, "merging" the next,
//     later sibling). The result is the resolved value.
//
// Because the fold order is canonical, nodes holding the same sibling set
// compute the same value even when the resolver is not commutative or
// associative (such as a user's WASM $retained policy). Because sibling sets
// converge (dvv.Sync is a join: commutative, associative, idempotent, and
// delivery is repaired by anti-entropy), resolved values converge.
//
// # Deferred resolution
//
// A Resolver runs inside Apply, so under whatever lock serializes the
// Store. A table named in Config.Deferred has no Resolver: when Apply
// leaves one of its keys with two or more distinct payloads, the key is
// pending (Update.Pending): its versions are merged as always (the digest
// and anti-entropy see them), but its resolved value stays what it was.
// The caller reads the canonical distinct payloads with Conflict, folds
// them by rule 4 outside its lock (Fold, or batched through a WASM policy)
// and installs the result with Resolve, which refuses it if the key's
// version set changed meanwhile (a later delta or write, which re-reports
// the key as pending or resolves it). Resolve writes back like Apply does,
// so a deferred table converges to exactly what a synchronous resolver
// would give.
//
// # Write-back (bounded)
//
// Siblings would otherwise live until the key's next write, and every
// change re-runs the resolver over all of them. So when applying a delta
// leaves a key with two or more distinct payloads, exactly one node writes
// the resolution back as a new version that supersedes every sibling it
// has: the node that wrote the last sibling in canonical order (the
// designated node). Others only compute the value. The write-back carries
// the resolved payload, the designated node as origin and the largest
// sibling timestamp, and is returned in Update.Out for broadcast.
//
// The write-back cannot ping-pong: once all nodes hold the same set, only
// one node is designated for it, and its write-back leaves a single
// version. Nodes that resolved different partial sets concurrently produce
// concurrent write-backs; when those carry the same payload they collapse
// (rule 3) and nothing more is written; when they differ, the designated
// node for the new set writes once more, and its version supersedes both.
// The designated node of a set whose last writer is gone for good never
// comes; the siblings then stay, which is still convergent (rule 4), until
// the next write. So do conflicts that a freshly started store is
// designated for before its first Put, Delete or GC, until the key's next
// change after that: without a clock reading the store cannot tell which
// dots it issued before the restart. A resolver that is not deterministic
// (a WASM call that times out on one node only) is also repaired: every
// node adopts the designated node's write-back.
//
// # Anti-entropy
//
// Broadcasts can be lost. Digest summarizes each table as Config.Buckets
// 64-bit sums (XOR of a hash of every key and its version set, maintained
// incrementally, so Digest costs O(tables x buckets), not O(keys)). A round
// between nodes A and B:
//
//	A -> B   A.Digest()
//	B        diff := B.Digest().Diff(digestOfA)
//	B -> A   B.EntriesIn(table, buckets) for each diff element, and diff
//	A        Apply each delta; A -> B A.EntriesIn(...) for the same diff
//	B        Apply each delta
//
// Apply is idempotent, so overlapping with broadcasts or in-flight writes
// is harmless. A joining node gets Snapshot() of a peer and Applies it.
//
// Deltas and digests have binary encodings (AppendDeltas, DecodeDeltas,
// Digest.AppendBinary, DecodeDigest); the decoders are fuzzed.
package replica
