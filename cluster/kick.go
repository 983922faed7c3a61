package cluster

import (
	"context"
	"errors"
	"fmt"
)

// CallKick asks the node holding a session to disconnect its client
// (client id -> one byte: 1 kicked, 0 no live connection there).
const CallKick uint8 = 19

// ErrNoSession: no node of the cluster holds a session for the client id.
var ErrNoSession = errors.New("cluster: no session for this client id")

// Kick disconnects the client of clientID wherever its session lives
// (an operator's `mendmq ctl sessions kick`): on this node through the
// broker, on another through that node. It returns the session's node and
// whether a live connection was closed; ErrNoSession if the session
// table places the id nowhere.
func (n *Node) Kick(ctx context.Context, clientID string) (node string, kicked bool, err error) {
	node, ok := n.SessionNode(clientID)
	if !ok {
		return "", false, fmt.Errorf("%w: %q", ErrNoSession, clientID)
	}
	if node == n.name {
		kicked, err = n.broker.KickSession(clientID)
		return node, kicked, err
	}
	b, err := n.dp.Call(ctx, node, CallKick, []byte(clientID))
	if err != nil {
		return node, false, fmt.Errorf("kick %q on %s: %w", clientID, node, err)
	}
	return node, len(b) == 1 && b[0] == 1, nil
}

// handleKick kicks a local client for another node's operator.
func (n *Node) handleKick(from string, payload []byte) ([]byte, error) {
	id := string(payload)
	if id == "" || len(id) > 65535 {
		return nil, fmt.Errorf("kick from %s: client id of %d bytes", from, len(id))
	}
	kicked, err := n.broker.KickSession(id)
	if err != nil {
		return nil, err
	}
	if kicked {
		n.log.Info("client kicked for a peer's operator", "client", id, "peer", from)
		return []byte{1}, nil
	}
	return []byte{0}, nil
}
