package sessions

import (
	"github.com/mendmq/mendmq/cluster/replica"
	"github.com/mendmq/mendmq/cluster/routes"
)

// Resolver decides between concurrent versions of a client id's record:
// the table's replica.Resolver. Concurrent versions exist when the id was
// registered, or its record rewritten, on two sides of a netsplit; every
// node folds them the same way (package replica), so every node's table
// names the same surviving session, and the node of each losing session
// drops its copy (Sessions.changed).
//
// The rule, in order:
//
//  1. Two live records: the later CONNECT wins, by the records' hybrid
//     logical clock stamps (routes.Compare: SessionRecord.Connect, ties to
//     the larger node name). Record rewrites (subscriptions) keep their
//     CONNECT's stamp, so a session that only changed its subscriptions
//     during the split does not beat a later CONNECT elsewhere, whatever
//     the nodes' wall clocks say.
//  2. A live record and a tombstone: the live record wins. A concurrent
//     tombstone was written by another node (a node's own writes are never
//     concurrent with each other): it ended its own session of the id, or
//     withdrew the records of a node it considered gone, and did not know
//     of this session, which still exists.
//  3. A live record that does not decode loses to one that does.
//  4. Anything else (two tombstones, two undecodable records, the same
//     CONNECT twice): replica.LatestWins.
//
// It is a pure function of its arguments, as replica requires.
var Resolver replica.Resolver = replica.ResolverFunc(resolve)

func resolve(table, key string, existing, merging replica.Sibling) replica.Sibling {
	e, eok := liveRecord(existing)
	m, mok := liveRecord(merging)
	switch {
	case eok && mok:
		if c := routes.Compare(e, m); c > 0 {
			return existing
		} else if c < 0 {
			return merging
		}
	case eok && merging.Deleted:
		return existing
	case mok && existing.Deleted:
		return merging
	case eok && !merging.Deleted:
		return existing // merging is live but undecodable
	case mok && !existing.Deleted:
		return merging
	}
	return replica.LatestWins.Resolve(table, key, existing, merging)
}

// liveRecord decodes a live sibling's record.
func liveRecord(s replica.Sibling) (routes.SessionRecord, bool) {
	if s.Deleted {
		return routes.SessionRecord{}, false
	}
	rec, err := routes.DecodeRecord(s.Value)
	return rec, err == nil
}
