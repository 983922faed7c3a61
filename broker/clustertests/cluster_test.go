package clustertests

import (
	"testing"
)

// TestCluster runs the scenarios that do not disturb membership on one
// shared 3-node cluster over plain TCP (the production transports), one
// subtest after the other: starting a cluster is the expensive part, and
// each scenario uses its own topics and client ids.
func TestCluster(t *testing.T) {
	c := newCluster(t, 3, clusterOptions{})
	for _, s := range []struct {
		name string
		run  func(*testing.T, *testCluster)
	}{
		{"EveryPairEveryQoS", testEveryPair},
		{"Wildcards", testWildcards},
		{"V5Properties", testV5Properties},
		{"MessageExpiry", testMessageExpiry},
		{"QoSDowngrade", testQoSDowngrade},
		{"RetainAsPublished", testRetainAsPublished},
		{"NoLocal", testNoLocal},
		{"SharedSubscriptions", testShared},
		{"Retained", testRetained},
		{"RetainedConcurrentWrites", testRetainedConcurrent},
		{"SessionMovesWithQueue", testSessionMove},
		{"SessionTakenOver", testTakenOver},
		{"PublishRightAfterMove", testPublishRightAfterMove},
		{"TakeoverUnderLoad", testTakeoverUnderLoad},
		{"LiveTakeoverUnderLoad", testLiveTakeoverUnderLoad},
		{"WillAcrossNodes", testWill},
		{"DelayedWillOfEndedSession", testDelayedWillOfEndedSession},
		{"DelayedWillAcrossNodes", testDelayedWillAcrossNodes},
		{"BadInput", testBadInput},
	} {
		t.Run(s.name, func(t *testing.T) { s.run(t, c.with(t)) })
		// The scenario's clients are closed: let the brokers notice and
		// the session records' deletions settle before the next one
		// subscribes (see waitRoutes).
		c.waitDisconnected()
		c.waitRoutes()
	}
}
