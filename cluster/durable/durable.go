// Package durable is the cluster's own storage: a bbolt file beside the
// broker's (storage.path + ".cluster"), holding what the cluster must not
// lose in a restart — the publishes held for unreachable nodes (package
// outbox) today. The broker's file belongs to mochi's storage hook, which
// keeps it locked, so the cluster keeps its own.
package durable

import (
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/mendmq/mendmq/cluster/outbox"
)

// DB is an open cluster storage file.
type DB struct{ db *bbolt.DB }

var (
	bucketOutbox   = []byte("outbox")
	bucketMapStore = []byte("mapstore")
	// bucketConflicts holds the merges a policy failed on, parked for an
	// operator (package plugins decides their encoding).
	bucketConflicts = []byte("conflicts")
)

// Open opens (creating) the file at path; lockTimeout bounds the wait for
// another process's lock on it.
func Open(path string, lockTimeout time.Duration) (*DB, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: lockTimeout})
	if err != nil {
		return nil, fmt.Errorf("open cluster storage %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketOutbox, bucketMapStore, bucketConflicts} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("prepare cluster storage %s: %w", path, err), db.Close())
	}
	return &DB{db: db}, nil
}

// Close closes the file.
func (d *DB) Close() error { return d.db.Close() }

// MapStore is the partitioned maps' store in this file (package pmap's
// MapStore): entries by (map, key).
func (d *DB) MapStore() *KV { return &KV{db: d.db, bucket: bucketMapStore} }

// Conflicts is the parked merge conflicts' bucket, by id.
func (d *DB) Conflicts() *KV { return &KV{db: d.db, bucket: bucketConflicts} }

// KV is one bucket of the file.
type KV struct {
	db     *bbolt.DB
	bucket []byte
}

// Write puts the pairs with a value and deletes those without, in one
// transaction.
func (k *KV) Write(pairs []KVPair) error {
	return k.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(k.bucket)
		for _, p := range pairs {
			var err error
			if p.Value == nil {
				err = b.Delete(p.Key)
			} else {
				err = b.Put(p.Key, p.Value)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// Get returns a copy of key's value, or nil when the bucket has no such
// key.
func (k *KV) Get(key []byte) ([]byte, error) {
	var out []byte
	err := k.db.View(func(tx *bbolt.Tx) error {
		if v := tx.Bucket(k.bucket).Get(key); v != nil {
			out = append(make([]byte, 0, len(v)), v...) // v lives as long as the transaction
		}
		return nil
	})
	return out, err
}

// ForEach calls fn with every pair, in key order; fn may keep copies only.
func (k *KV) ForEach(fn func(key, value []byte) error) error {
	return k.db.View(func(tx *bbolt.Tx) error { return tx.Bucket(k.bucket).ForEach(fn) })
}

// KVPair is a key and its value (nil: delete).
type KVPair struct{ Key, Value []byte }

// Outbox is the outbox.Store in this file.
func (d *DB) Outbox() outbox.Store { return outboxStore{d.db} }

type outboxStore struct{ db *bbolt.DB }

func (s outboxStore) Put(peer string, seq uint64, payload []byte) error {
	return s.db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketOutbox).Put(outbox.Key(peer, seq), payload)
	})
}

func (s outboxStore) Delete(peer string, seqs []uint64) error {
	return s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketOutbox)
		for _, seq := range seqs {
			if err := b.Delete(outbox.Key(peer, seq)); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s outboxStore) Load() (map[string][]outbox.Message, error) {
	out := map[string][]outbox.Message{}
	err := s.db.View(func(tx *bbolt.Tx) error {
		// Keys sort by peer, then big-endian seq: each peer's messages
		// come in order.
		return tx.Bucket(bucketOutbox).ForEach(func(k, v []byte) error {
			peer, seq, err := outbox.ParseKey(k)
			if err != nil {
				return err
			}
			out[peer] = append(out[peer], outbox.Message{Seq: seq, Payload: append([]byte(nil), v...)})
			return nil
		})
	})
	return out, err
}
