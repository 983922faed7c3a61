package broker

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"

	"github.com/mendmq/mendmq/broker/admin"
	"github.com/mendmq/mendmq/plugins"
)

// Parked conflicts across the cluster. Each node parks the merges its
// policies could not decide and numbers them itself, so a conflict is
// addressed by the node that holds it and its id there: "n2/7". The list
// asks every member (callConflicts); a resolution or a drop addressed to
// another node is carried out by that node (callConflictResolve,
// callConflictDrop), which alone can write its parked entry and remove
// the conflict from its storage.
//
//	GET    /api/v1/policies/conflicts[?scope=cluster|node][&limit=N]
//	POST   /api/v1/policies/conflicts/{node}/{id}  {"action": ...}
//	DELETE /api/v1/policies/conflicts/{node}/{id}
//
// The forms without {node} address this node's conflicts, as before
// conflicts were listed cluster-wide.

// Limits of a conflict listing, per node: default and maximum "limit",
// and the bytes of one node's answer (values are base64 in JSON; the
// data plane's frames are 16 MiB by default).
const (
	defaultConflictLimit = 1000
	maxConflictLimit     = 10000
	maxConflictPageBytes = 4 << 20
)

// NodeConflict is a parked conflict with the node that holds it.
type NodeConflict struct {
	// Node holds the conflict.
	Node string `json:"node"`
	// Ref addresses it from any node: "node/id" (ctl policy conflicts
	// resolve REF, POST /api/v1/policies/conflicts/{node}/{id}).
	Ref string `json:"ref"`
	plugins.Conflict
}

// ConflictList is the answer of GET /api/v1/policies/conflicts.
type ConflictList struct {
	// Node answered the request.
	Node string `json:"node"`
	// Scope is "cluster" (every member was asked) or "node" (this node's
	// own, with ?scope=node or without clustering).
	Scope string `json:"scope"`
	// Conflicts are sorted by node, then oldest first.
	Conflicts []NodeConflict `json:"conflicts"`
	// Parked counts the conflicts of each node that answered, listed or
	// not (a node lists at most ?limit=).
	Parked map[string]int `json:"parked"`
	// Unreachable are the members that could not be asked (cut off,
	// dead, not answering): their conflicts are missing from the list,
	// which is a partial one.
	Unreachable []PeerFailure `json:"unreachable"`
	// Truncated: some node had more conflicts than the list carries.
	Truncated bool `json:"truncated"`
}

// PeerFailure is a member that a cluster-wide question did not reach.
type PeerFailure struct {
	Node  string `json:"node"`
	Error string `json:"error"`
}

// conflictsQuery is the question of callConflicts.
type conflictsQuery struct {
	Limit int `json:"limit"`
}

// conflictPage is one node's answer to callConflicts.
type conflictPage struct {
	Conflicts []plugins.Conflict `json:"conflicts"`
	// Total counts the node's parked conflicts.
	Total     int  `json:"total"`
	Truncated bool `json:"truncated"`
}

// conflictOp is the question of callConflictResolve and callConflictDrop.
type conflictOp struct {
	ID     uint64 `json:"id"`
	Action string `json:"action,omitempty"`
}

// mountConflicts adds the endpoints of the parked conflicts.
func (b *Broker) mountConflicts() {
	b.admin.Handle("GET /api/v1/policies/conflicts", http.HandlerFunc(b.apiConflicts))
	b.admin.Handle("POST /api/v1/policies/conflicts/{id}", http.HandlerFunc(b.apiConflictResolve))
	b.admin.Handle("POST /api/v1/policies/conflicts/{node}/{id}", http.HandlerFunc(b.apiConflictResolve))
	b.admin.Handle("DELETE /api/v1/policies/conflicts/{id}", http.HandlerFunc(b.apiConflictDrop))
	b.admin.Handle("DELETE /api/v1/policies/conflicts/{node}/{id}", http.HandlerFunc(b.apiConflictDrop))
}

// localConflicts returns up to limit of this node's conflicts, oldest
// first, within maxConflictPageBytes.
func (b *Broker) localConflicts(limit int) conflictPage {
	all := b.policies.Conflicts()
	page := conflictPage{Conflicts: []plugins.Conflict{}, Total: len(all)}
	size := 0
	for _, c := range all {
		if len(page.Conflicts) == limit {
			page.Truncated = true
			break
		}
		// Roughly the encoded size: base64 values, plus the fields.
		size += 512 + len(c.Reason) + 4*(len(c.Merging.Key)+len(c.Merging.Value))/3
		if c.Existing != nil {
			size += 4 * (len(c.Existing.Key) + len(c.Existing.Value)) / 3
		}
		if size > maxConflictPageBytes && len(page.Conflicts) > 0 {
			page.Truncated = true
			break
		}
		page.Conflicts = append(page.Conflicts, c)
	}
	return page
}

// apiConflicts lists the parked conflicts of every member (or of this
// node: ?scope=node). Members that cannot be asked are reported in
// "unreachable"; the list is then partial, not an error.
func (b *Broker) apiConflicts(w http.ResponseWriter, r *http.Request) {
	q, ok := admin.Query(w, r, "scope", "limit")
	if !ok {
		return
	}
	limit, ok := admin.Limit(w, q["limit"], defaultConflictLimit, maxConflictLimit)
	if !ok {
		return
	}
	self := b.cfg.Node.Name
	out := ConflictList{Node: self, Scope: "cluster", Conflicts: []NodeConflict{}, Parked: map[string]int{}, Unreachable: []PeerFailure{}}
	switch q["scope"] {
	case "", "cluster":
	case "node":
		out.Scope = "node"
	default:
		admin.WriteError(w, http.StatusBadRequest, fmt.Errorf("scope=%q: want cluster or node", q["scope"]))
		return
	}
	if b.node == nil {
		out.Scope = "node"
	}
	add := func(node string, page conflictPage) {
		out.Parked[node] = page.Total
		out.Truncated = out.Truncated || page.Truncated
		for _, c := range page.Conflicts {
			out.Conflicts = append(out.Conflicts, NodeConflict{Node: node, Ref: fmt.Sprintf("%s/%d", node, c.ID), Conflict: c})
		}
	}
	add(self, b.localConflicts(limit))
	if out.Scope == "cluster" {
		type answer struct {
			node string
			page conflictPage
			err  error
		}
		ctx, cancel := context.WithTimeout(r.Context(), peerTimeout)
		defer cancel()
		ch := make(chan answer)
		asked := 0
		for _, p := range b.node.Peers() {
			if p.State == "left" { // gone for good; its conflicts went with it
				continue
			}
			asked++
			go func() {
				a := answer{node: p.Name}
				rep, err := b.askPeer(ctx, p.Name, callConflicts, conflictsQuery{Limit: limit})
				switch {
				case err != nil:
					a.err = err
				case rep.Status != http.StatusOK:
					a.err = errors.New(rep.Error)
				default:
					a.err = json.Unmarshal(rep.Body, &a.page)
				}
				ch <- a
			}()
		}
		for range asked {
			a := <-ch
			if a.err != nil {
				out.Unreachable = append(out.Unreachable, PeerFailure{Node: a.node, Error: a.err.Error()})
				continue
			}
			add(a.node, a.page)
		}
		slices.SortFunc(out.Unreachable, func(x, y PeerFailure) int { return cmp.Compare(x.Node, y.Node) })
	}
	slices.SortStableFunc(out.Conflicts, func(x, y NodeConflict) int { return cmp.Compare(x.Node, y.Node) })
	admin.WriteJSON(w, http.StatusOK, out)
}

// conflictAddr reads the address of a conflict from the path: {id} (this
// node's) or {node}/{id}. On failure it writes the answer.
func (b *Broker) conflictAddr(w http.ResponseWriter, r *http.Request) (node string, id uint64, ok bool) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil {
		admin.WriteError(w, http.StatusBadRequest, errors.New("conflict id must be a number (address another node's as NODE/ID)"))
		return "", 0, false
	}
	node = r.PathValue("node")
	if node == "" {
		node = b.cfg.Node.Name
	}
	return node, id, true
}

// noCluster answers a request for another node's conflict on a node
// without clustering (after the request was checked), and reports it.
func (b *Broker) noCluster(w http.ResponseWriter, node string) bool {
	if b.node != nil {
		return false
	}
	admin.WriteJSON(w, http.StatusNotFound, map[string]string{
		"error": fmt.Sprintf("clustering is disabled: this is node %s, it knows no node %s", b.cfg.Node.Name, node),
		"node":  node,
	})
	return true
}

// apiConflictResolve resolves a parked conflict, on the node that holds
// it.
func (b *Broker) apiConflictResolve(w http.ResponseWriter, r *http.Request) {
	node, id, ok := b.conflictAddr(w, r)
	if !ok {
		return
	}
	var req struct {
		Action string `json:"action"`
	}
	if !admin.DecodeJSON(w, r, &req) {
		return
	}
	if err := validAction(req.Action); err != nil {
		admin.WriteError(w, http.StatusBadRequest, err)
		return
	}
	if node == b.cfg.Node.Name {
		ctx, cancel := context.WithTimeout(r.Context(), resolveTimeout)
		defer cancel()
		res, code, err := b.resolveConflict(ctx, id, req.Action, "admin API "+r.RemoteAddr)
		if err != nil {
			admin.WriteError(w, code, err)
			return
		}
		admin.WriteJSON(w, http.StatusOK, res)
		return
	}
	if b.noCluster(w, node) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), peerResolveTimeout)
	defer cancel()
	rep, err := b.askPeer(ctx, node, callConflictResolve, conflictOp{ID: id, Action: req.Action})
	switch {
	case err != nil:
		writePeerError(w, node, fmt.Errorf("resolve conflict %s/%d: %w", node, id, err))
	case rep.Status != http.StatusOK:
		writePeerReply(w, node, rep)
	default:
		admin.WriteJSON(w, http.StatusOK, rep.Body)
	}
}

// apiConflictDrop discards a parked conflict (the existing entry stays),
// on the node that holds it.
func (b *Broker) apiConflictDrop(w http.ResponseWriter, r *http.Request) {
	if !admin.NoBody(w, r) {
		return
	}
	node, id, ok := b.conflictAddr(w, r)
	if !ok {
		return
	}
	if node == b.cfg.Node.Name {
		if code, err := b.dropConflict(id, "admin API "+r.RemoteAddr); err != nil {
			admin.WriteError(w, code, err)
			return
		}
	} else {
		if b.noCluster(w, node) {
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), peerTimeout)
		defer cancel()
		rep, err := b.askPeer(ctx, node, callConflictDrop, conflictOp{ID: id})
		switch {
		case err != nil:
			writePeerError(w, node, fmt.Errorf("drop conflict %s/%d: %w", node, id, err))
			return
		case rep.Status != http.StatusOK:
			writePeerReply(w, node, rep)
			return
		}
	}
	admin.WriteJSON(w, http.StatusOK, map[string]any{"ok": true, "node": node, "id": id})
}

// peerConflicts answers callConflicts: this node's conflicts.
func (b *Broker) peerConflicts(from string, p []byte) ([]byte, error) {
	var q conflictsQuery
	if err := json.Unmarshal(p, &q); err != nil {
		return nil, fmt.Errorf("conflicts question from %s: %w", from, err)
	}
	return replyOK(b.localConflicts(min(max(q.Limit, 1), maxConflictLimit)))
}

// peerConflictResolve answers callConflictResolve: a resolution of one
// of this node's conflicts that an operator asked another node for.
func (b *Broker) peerConflictResolve(from string, p []byte) ([]byte, error) {
	var op conflictOp
	if err := json.Unmarshal(p, &op); err != nil {
		return nil, fmt.Errorf("conflict resolution from %s: %w", from, err)
	}
	if err := validAction(op.Action); err != nil {
		return replyError(http.StatusBadRequest, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	res, code, err := b.resolveConflict(ctx, op.ID, op.Action, "peer "+from)
	if err != nil {
		return replyError(code, err)
	}
	return replyOK(res)
}

// peerConflictDrop answers callConflictDrop.
func (b *Broker) peerConflictDrop(from string, p []byte) ([]byte, error) {
	var op conflictOp
	if err := json.Unmarshal(p, &op); err != nil {
		return nil, fmt.Errorf("conflict drop from %s: %w", from, err)
	}
	if code, err := b.dropConflict(op.ID, "peer "+from); err != nil {
		return replyError(code, err)
	}
	return replyOK(map[string]bool{"ok": true})
}
