package broker

import (
	"errors"
	"net/http"

	"github.com/mendmq/mendmq/broker/admin"
)

// The development endpoints (admin.debug): the partition switch of
// cluster/faults. They answer 403 while admin.debug is false, so a
// production node cannot be split through its admin API.

var errDebugOff = errors.New("the debug endpoints are off: set admin.debug: true in this node's configuration (it reloads without a restart); never on a production node")

// debugPartition is the answer of the partition endpoints.
type debugPartition struct {
	Enabled bool     `json:"enabled"` // admin.debug
	Node    string   `json:"node"`
	Cut     []string `json:"cut"` // members whose links this node cuts
}

func (b *Broker) mountDebug() {
	b.admin.Handle("GET /api/v1/debug/partition", http.HandlerFunc(b.apiDebugPartitionGet))
	b.admin.Handle("POST /api/v1/debug/partition", http.HandlerFunc(b.apiDebugPartition))
	b.admin.Handle("POST /api/v1/debug/heal", http.HandlerFunc(b.apiDebugHeal))
}

// applyDebug applies admin.debug from a reload: turning it off heals
// every cut.
func (b *Broker) applyDebug(on bool) {
	if b.debug.Swap(on) == on {
		return
	}
	b.log.Info("admin.debug changed", "debug", on)
	if !on && b.node != nil {
		b.node.DebugHeal()
	}
}

func (b *Broker) debugState() debugPartition {
	st := debugPartition{Enabled: b.debug.Load(), Cut: []string{}}
	if b.node != nil {
		st.Node, st.Cut = b.node.Name(), b.node.DebugCuts()
	}
	return st
}

// debugAllowed writes the refusal when the debug endpoints may not act.
func (b *Broker) debugAllowed(w http.ResponseWriter) bool {
	switch {
	case !b.debug.Load():
		admin.WriteError(w, http.StatusForbidden, errDebugOff)
	case b.node == nil:
		admin.WriteError(w, http.StatusConflict, errNoCluster)
	default:
		return true
	}
	return false
}

func (b *Broker) apiDebugPartitionGet(w http.ResponseWriter, r *http.Request) {
	admin.WriteJSON(w, http.StatusOK, b.debugState())
}

// apiDebugPartition cuts this node's cluster links to and from the
// members named in {"members": [...]}.
func (b *Broker) apiDebugPartition(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Members []string `json:"members"`
	}
	if !admin.DecodeJSON(w, r, &req) || !b.debugAllowed(w) {
		return
	}
	if len(req.Members) == 0 {
		admin.WriteError(w, http.StatusBadRequest, errors.New(`name the members to cut off: {"members": ["n3"]}`))
		return
	}
	if err := b.node.DebugCut(req.Members...); err != nil {
		admin.WriteError(w, http.StatusBadRequest, err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, b.debugState())
}

// apiDebugHeal restores the links to the members named in
// {"members": [...]}, or to every cut member with no body.
func (b *Broker) apiDebugHeal(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Members []string `json:"members"`
	}
	if r.ContentLength != 0 {
		if !admin.DecodeJSON(w, r, &req) {
			return
		}
	}
	if !b.debugAllowed(w) {
		return
	}
	healed := b.node.DebugHeal(req.Members...)
	admin.WriteJSON(w, http.StatusOK, struct {
		debugPartition
		Healed []string `json:"healed"`
	}{b.debugState(), append([]string{}, healed...)})
}
