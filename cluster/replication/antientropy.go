package replication

import (
	"context"
	"encoding/binary"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/mendmq/mendmq/cluster/internal/wire"
	"github.com/mendmq/mendmq/cluster/replica"
)

// AntiEntropy compares digests with peer and exchanges what differs in
// both directions; the first success marks the node Synced. It returns
// how many entries the peer sent and how many this node sent back: 0 and
// 0 means the two held the same tables.
func (r *Replicator) AntiEntropy(ctx context.Context, peer string) (got, sent int, err error) {
	r.mu.Lock()
	d := r.store.Digest()
	r.mu.Unlock()
	req, err := d.AppendBinary(nil)
	if err != nil {
		r.log.Error("encode digest", "error", err)
		return 0, 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	r.stats.AERounds.Add(1)
	resp, err := r.tr.Call(ctx, peer, CallDigest, req)
	if err != nil {
		r.stats.AEFailures.Add(1)
		r.log.Debug("anti-entropy", "peer", peer, "error", err)
		return 0, 0, err
	}
	sets, theirs, err := decodeRepair(resp)
	if err != nil {
		r.stats.BadMessages.Add(1)
		r.log.Warn("anti-entropy answer", "peer", peer, "error", err)
		return 0, 0, err
	}
	r.apply(theirs, pathAntiEntropy)
	r.stats.AERepaired.Add(uint64(len(theirs)))
	r.MarkSynced()
	r.mu.Lock()
	var mine []replica.Delta
	for _, s := range sets {
		mine = append(mine, r.store.EntriesIn(s.Table, s.Buckets)...)
	}
	r.mu.Unlock()
	got, sent = len(theirs), len(mine)
	// Large repairs go in chunks that fit a frame.
	for len(mine) > 0 {
		k := min(len(mine), chunk)
		if err := r.tr.SendWait(ctx, peer, FrameDeltas, replica.AppendDeltas(nil, mine[:k]...)); err != nil {
			r.stats.AEFailures.Add(1)
			return got, sent, err
		}
		mine = mine[k:]
	}
	return got, sent, nil
}

// Fingerprints returns a fingerprint of each table's version sets, from
// the anti-entropy digest: two nodes with equal fingerprints for a table
// hold the same versions of every key (up to hash collisions), and
// anti-entropy between them repairs nothing.
func (r *Replicator) Fingerprints() map[string]uint64 {
	r.mu.Lock()
	d := r.store.Digest()
	r.mu.Unlock()
	out := make(map[string]uint64, len(d.Tables))
	for _, t := range d.Tables {
		b := make([]byte, 0, 8*len(t.Sums))
		empty := true
		for _, s := range t.Sums {
			b = binary.LittleEndian.AppendUint64(b, s)
			empty = empty && s == 0
		}
		if !empty { // an emptied table reads as absent, as in Diff
			out[t.Name] = xxhash.Sum64(b)
		}
	}
	return out
}

// Pending returns how many conflicts wait for the merge worker.
func (r *Replicator) Pending() int {
	r.pendMu.Lock()
	defer r.pendMu.Unlock()
	return len(r.pending)
}

// answerDigest is the responder's half of anti-entropy.
func (r *Replicator) answerDigest(from string, req []byte) ([]byte, error) {
	remote, err := replica.DecodeDigest(req)
	if err != nil {
		r.stats.BadMessages.Add(1)
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	sets, err := r.store.Digest().Diff(remote)
	if err != nil {
		return nil, err
	}
	var mine []replica.Delta
	for _, s := range sets {
		mine = append(mine, r.store.EntriesIn(s.Table, s.Buckets)...)
	}
	return appendRepair(nil, sets, mine), nil
}

const (
	maxTables   = 1 << 16
	maxBucketID = 1 << 20
)

// appendRepair encodes an anti-entropy answer: the differing buckets and
// the answering node's entries in them.
func appendRepair(b []byte, sets []replica.BucketSet, deltas []replica.Delta) []byte {
	b = binary.AppendUvarint(b, uint64(len(sets)))
	for _, s := range sets {
		b = wire.AppendStr(b, s.Table)
		b = binary.AppendUvarint(b, uint64(len(s.Buckets)))
		for _, i := range s.Buckets {
			b = binary.AppendUvarint(b, uint64(i))
		}
	}
	return replica.AppendDeltas(b, deltas...)
}

func decodeRepair(b []byte) ([]replica.BucketSet, []replica.Delta, error) {
	r := wire.NewReader(b)
	n := r.Uvarint()
	if n > maxTables {
		r.Fail("%d tables", n)
	}
	var sets []replica.BucketSet
	for i := uint64(0); i < n && r.Err() == nil; i++ {
		s := replica.BucketSet{Table: r.Str(wire.MaxName)}
		m := r.Uvarint()
		if m > maxBucketID {
			r.Fail("%d buckets", m)
		}
		for j := uint64(0); j < m && r.Err() == nil; j++ {
			id := r.Uvarint()
			if id > maxBucketID {
				r.Fail("bucket %d", id)
			}
			s.Buckets = append(s.Buckets, int(id))
		}
		sets = append(sets, s)
	}
	if r.Err() != nil {
		return nil, nil, r.Err()
	}
	deltas, err := replica.DecodeDeltas(r.Rest())
	if err != nil {
		return nil, nil, err
	}
	return sets, deltas, nil
}
