package broker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/cluster/dataplane"
)

// TestPeerCallNumbers: the broker's node-to-node calls keep their
// numbers (a change is a protocol change: a node of another version would
// answer another question) and lie in the range the cluster leaves to the
// broker.
func TestPeerCallNumbers(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  uint8
		want uint8
	}{
		{"session", callSession, 64},
		{"conflicts", callConflicts, 65},
		{"conflict resolve", callConflictResolve, 66},
		{"conflict drop", callConflictDrop, 67},
	} {
		if tc.got != tc.want {
			t.Errorf("%s is call %d, the protocol says %d", tc.name, tc.got, tc.want)
		}
		if tc.got < cluster.FirstBrokerCall || tc.got > cluster.LastBrokerCall {
			t.Errorf("%s (%d) is outside the broker's range", tc.name, tc.got)
		}
	}
}

// TestPeerStatus: what an operator is told when another node could not
// answer.
func TestPeerStatus(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{fmt.Errorf("show: %w: n2 is cut off", cluster.ErrPeerUnreachable), http.StatusGatewayTimeout},
		{fmt.Errorf("%w: n2 did not answer in time: %w", cluster.ErrPeerUnreachable, context.DeadlineExceeded), http.StatusGatewayTimeout},
		{fmt.Errorf("drop: %w: \"n9\"", cluster.ErrUnknownMember), http.StatusNotFound},
		{cluster.ErrNotRunning, http.StatusServiceUnavailable},
		{fmt.Errorf("resolve: %w", &dataplane.RemoteError{Peer: "n2", Msg: "bad question"}), http.StatusBadGateway},
		{errors.New("decode the answer of n2: no status"), http.StatusBadGateway},
	} {
		if got := peerStatus(tc.err); got != tc.want {
			t.Errorf("peerStatus(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}
