package broker

import (
	"errors"
	"net/http"
	"time"

	"github.com/mendmq/mendmq/broker/admin"
	"github.com/mendmq/mendmq/broker/admin/statuspage"
	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/cluster/membership"
)

// mountAPI adds the /api/v1 endpoints of the parts this node runs, and
// the status page.
func (b *Broker) mountAPI() {
	if b.admin == nil {
		return
	}
	b.admin.Handle("GET /api/v1/overview", http.HandlerFunc(b.apiOverview))
	b.admin.Handle("GET /api/v1/cluster", http.HandlerFunc(b.apiCluster))
	b.admin.Handle("POST /api/v1/cluster/join", http.HandlerFunc(b.apiClusterJoin))
	b.admin.Handle("POST /api/v1/cluster/leave", http.HandlerFunc(b.apiClusterLeave))
	b.admin.Handle("POST /api/v1/cluster/forget/{name}", http.HandlerFunc(b.apiClusterForget))
	b.admin.Handle("GET /api/v1/sessions", http.HandlerFunc(b.apiSessions))
	b.admin.Handle("GET /api/v1/sessions/show", http.HandlerFunc(b.apiSessionShow))
	b.admin.Handle("POST /api/v1/sessions/kick", http.HandlerFunc(b.apiSessionKick))
	b.admin.Handle("GET /api/v1/subscriptions", http.HandlerFunc(b.apiSubscriptions))
	b.admin.Handle("GET /api/v1/retained", http.HandlerFunc(b.apiRetained))
	b.admin.Handle("DELETE /api/v1/retained", http.HandlerFunc(b.apiRetainedDelete))
	b.admin.Handle("GET /api/v1/policies", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		admin.WriteJSON(w, http.StatusOK, b.policies.List())
	}))
	b.admin.Handle("POST /api/v1/policies/reload", http.HandlerFunc(b.apiPoliciesReload))
	b.admin.Handle("POST /api/v1/policies/test", http.HandlerFunc(b.apiPolicyTest))
	b.mountConflicts()
	b.mountMaps()
	b.mountDebug()
	statuspage.Mount(b.admin)
}

// apiPoliciesReload re-reads the configuration sources (when the node was
// started from them) and the module files, validates, and swaps; on error
// the running policies stay and the answer says why.
func (b *Broker) apiPoliciesReload(w http.ResponseWriter, r *http.Request) {
	if !admin.NoBody(w, r) {
		return
	}
	var err error
	if f := b.reload.Load(); f != nil {
		err = (*f)()
	} else {
		err = b.policies.Reload()
	}
	if err != nil {
		admin.WriteError(w, http.StatusUnprocessableEntity, err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, map[string]any{"ok": true})
}

var errNoCluster = errors.New("clustering is disabled on this node (cluster.enabled: false)")

func (b *Broker) apiCluster(w http.ResponseWriter, r *http.Request) {
	if b.node == nil {
		admin.WriteJSON(w, http.StatusOK, map[string]any{"enabled": false, "node": b.cfg.Node.Name})
		return
	}
	admin.WriteJSON(w, http.StatusOK, map[string]any{"enabled": true, "status": b.node.Status()})
}

func (b *Broker) apiClusterJoin(w http.ResponseWriter, r *http.Request) {
	if b.node == nil {
		admin.WriteError(w, http.StatusConflict, errNoCluster)
		return
	}
	var req struct {
		Seeds []string `json:"seeds"`
	}
	if !admin.DecodeJSON(w, r, &req) {
		return
	}
	if len(req.Seeds) == 0 {
		admin.WriteError(w, http.StatusBadRequest, errors.New(`body must be {"seeds": ["host:port", ...]}`))
		return
	}
	n, err := b.node.Join(req.Seeds)
	if err != nil {
		code := http.StatusBadGateway // no seed answered, or they refused
		if errors.Is(err, cluster.ErrLeft) || errors.Is(err, cluster.ErrNotRunning) {
			code = clusterOpStatus(err)
		}
		admin.WriteError(w, code, err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, map[string]any{"ok": true, "contacted": n})
}

// membershipTimeout bounds the wait of leave and forget for peers to
// apply the deletion of session records (and for the leave broadcasts).
const membershipTimeout = 5 * time.Second

// apiClusterLeave takes the node out of the cluster for good (see
// cluster.Node.Leave): 200 with what was withdrawn, and what peers did
// not confirm, once it left.
func (b *Broker) apiClusterLeave(w http.ResponseWriter, r *http.Request) {
	if !admin.NoBody(w, r) {
		return
	}
	if b.node == nil {
		admin.WriteError(w, http.StatusConflict, errNoCluster)
		return
	}
	wd, err := b.node.Leave(membershipTimeout)
	if err != nil {
		admin.WriteError(w, clusterOpStatus(err), err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, map[string]any{"ok": true, "withdrawal": wd})
}

// apiClusterForget drops a failed or stopped member for good and deletes
// its session records cluster-wide from this node (cluster.Node.Forget).
func (b *Broker) apiClusterForget(w http.ResponseWriter, r *http.Request) {
	if !admin.NoBody(w, r) {
		return
	}
	if b.node == nil {
		admin.WriteError(w, http.StatusConflict, errNoCluster)
		return
	}
	wd, err := b.node.Forget(r.PathValue("name"), membershipTimeout)
	if err != nil {
		admin.WriteError(w, clusterOpStatus(err), err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, map[string]any{"ok": true, "withdrawal": wd})
}

// clusterOpStatus maps a refused membership operation to an HTTP status.
func clusterOpStatus(err error) int {
	switch {
	case errors.Is(err, membership.ErrUnknownMember):
		return http.StatusNotFound
	case errors.Is(err, membership.ErrMemberAlive), errors.Is(err, cluster.ErrLeft):
		return http.StatusConflict
	case errors.Is(err, cluster.ErrNotRunning):
		return http.StatusServiceUnavailable
	}
	return http.StatusBadRequest
}
