package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/mendmq/mendmq/broker/admin"
	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/cluster/dataplane"
)

// Questions one node's admin API asks another over the data plane
// (cluster.Node.HandleCall): state that only the broker holding it can
// answer for — a session as mochi keeps it, the merges a policy parked
// there. The numbers are part of the node-to-node protocol: never reuse
// one for another meaning.
const (
	// callSession: client id -> peerReply{SessionInfo with subscriptions}.
	callSession = cluster.FirstBrokerCall + 0
	// callConflicts: conflictsQuery -> peerReply{conflictPage}.
	callConflicts = cluster.FirstBrokerCall + 1
	// callConflictResolve: conflictOp -> peerReply{ConflictResolution}.
	callConflictResolve = cluster.FirstBrokerCall + 2
	// callConflictDrop: conflictOp -> peerReply{}.
	callConflictDrop = cluster.FirstBrokerCall + 3
)

// Bounds of the waits for another node.
const (
	// peerTimeout bounds a question to another node (a session, its
	// conflicts, a drop): a node cut off by a netsplit is refused at once
	// (cluster.ErrPeerUnreachable), one that stopped answering costs this.
	peerTimeout = 5 * time.Second
	// resolveTimeout bounds the work of a resolution on the node holding
	// the conflict (a map write goes to the key's owner and its backups).
	resolveTimeout = 10 * time.Second
	// peerResolveTimeout bounds the wait for another node's resolution:
	// its own work, and the round trip.
	peerResolveTimeout = resolveTimeout + 2*time.Second
)

// peerReply is the answer of every broker call: an HTTP status, the
// error message of a failure, and the JSON body of a success. The asking
// node writes it to its own client as the holding node would have.
type peerReply struct {
	Status int             `json:"status"`
	Error  string          `json:"error,omitempty"`
	Body   json.RawMessage `json:"body,omitempty"`
}

// replyOK encodes a successful answer.
func replyOK(v any) ([]byte, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode answer: %w", err)
	}
	return json.Marshal(peerReply{Status: http.StatusOK, Body: body})
}

// replyError encodes a refusal (a 4xx/5xx the asking node passes on).
func replyError(status int, err error) ([]byte, error) {
	return json.Marshal(peerReply{Status: status, Error: err.Error()})
}

// registerPeerCalls registers the broker's calls on its cluster node,
// before the node starts.
func (b *Broker) registerPeerCalls() error {
	for typ, f := range map[uint8]func(string, []byte) ([]byte, error){
		callSession:         b.peerSession,
		callConflicts:       b.peerConflicts,
		callConflictResolve: b.peerConflictResolve,
		callConflictDrop:    b.peerConflictDrop,
	} {
		if err := b.node.HandleCall(typ, f); err != nil {
			return fmt.Errorf("register the admin API's node-to-node calls: %w", err)
		}
	}
	return nil
}

// askPeer sends req (raw bytes, or a value encoded as JSON) to node as a
// call of type typ and decodes its peerReply.
func (b *Broker) askPeer(ctx context.Context, node string, typ uint8, req any) (peerReply, error) {
	payload, ok := req.([]byte)
	if !ok {
		var err error
		if payload, err = json.Marshal(req); err != nil {
			return peerReply{}, fmt.Errorf("encode the question for %s: %w", node, err)
		}
	}
	raw, err := b.node.Call(ctx, node, typ, payload)
	if err != nil {
		return peerReply{}, err
	}
	var rep peerReply
	if err := json.Unmarshal(raw, &rep); err != nil {
		return peerReply{}, fmt.Errorf("decode the answer of %s: %w", node, err)
	}
	if rep.Status == 0 {
		return peerReply{}, fmt.Errorf("decode the answer of %s: no status", node)
	}
	return rep, nil
}

// peerStatus maps a failed question to another node to the HTTP status
// the operator gets: 504 when the node is cut off, gone or silent (the
// answer names it), 404 for a name that is no member, 502 when it
// answered with an error.
func peerStatus(err error) int {
	var re *dataplane.RemoteError
	switch {
	case errors.Is(err, cluster.ErrUnknownMember):
		return http.StatusNotFound
	case errors.Is(err, cluster.ErrPeerUnreachable):
		return http.StatusGatewayTimeout
	case errors.Is(err, cluster.ErrNotRunning), errors.Is(err, cluster.ErrLeft):
		return http.StatusServiceUnavailable
	case errors.As(err, &re):
		return http.StatusBadGateway
	}
	return http.StatusBadGateway
}

// writePeerError answers a question that another node could not answer:
// the error, the node concerned, and whether it was unreachable.
func writePeerError(w http.ResponseWriter, node string, err error) {
	code := peerStatus(err)
	admin.WriteJSON(w, code, map[string]any{
		"error":       err.Error(),
		"node":        node,
		"unreachable": code == http.StatusGatewayTimeout,
	})
}

// writePeerReply writes a refusal from node as its own answer, naming the
// node.
func writePeerReply(w http.ResponseWriter, node string, rep peerReply) {
	admin.WriteJSON(w, rep.Status, map[string]any{"error": rep.Error, "node": node})
}

// peerSession answers callSession: the local session of a client id, as
// GET /api/v1/sessions/show would on this node.
func (b *Broker) peerSession(from string, p []byte) ([]byte, error) {
	id := string(p)
	if id == "" || len(id) > 65535 {
		return nil, fmt.Errorf("session question from %s: client id of %d bytes", from, len(id))
	}
	cl, ok := b.server.Clients.Get(id)
	if !ok || (b.chook != nil && !b.chook.Session.LocalSession(id)) {
		return replyError(http.StatusNotFound, fmt.Errorf("no session for client %q on node %s", id, b.cfg.Node.Name))
	}
	return replyOK(b.sessionInfo(cl, true))
}

// showElsewhere answers GET /api/v1/sessions/show for a client this node
// does not hold: with the session as the node the session table places
// it on sees it (its "node"; "via" is this node), 404 when no node has
// it, 504 naming the node when that node cannot be reached.
func (b *Broker) showElsewhere(w http.ResponseWriter, r *http.Request, clientID string) {
	notFound := fmt.Errorf("no session for client %q", clientID)
	if b.node == nil {
		admin.WriteError(w, http.StatusNotFound, notFound)
		return
	}
	node, ok := b.node.SessionNode(clientID)
	if !ok || node == b.cfg.Node.Name {
		admin.WriteError(w, http.StatusNotFound, notFound)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), peerTimeout)
	defer cancel()
	rep, err := b.askPeer(ctx, node, callSession, []byte(clientID))
	if err != nil {
		writePeerError(w, node, fmt.Errorf("show the session of client %q on %s: %w", clientID, node, err))
		return
	}
	if rep.Status != http.StatusOK {
		// A takeover or an expiry the session table has not caught up with.
		writePeerReply(w, node, rep)
		return
	}
	var si SessionInfo
	if err := json.Unmarshal(rep.Body, &si); err != nil {
		writePeerError(w, node, fmt.Errorf("decode the session of client %q from %s: %w", clientID, node, err))
		return
	}
	si.Via = b.cfg.Node.Name
	admin.WriteJSON(w, http.StatusOK, si)
}
