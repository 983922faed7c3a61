package broker

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/mendmq/mendmq/broker/admin"
)

// mountAPI adds the /api/v1 endpoints of the parts this node runs.
func (b *Broker) mountAPI() {
	if b.admin == nil {
		return
	}
	b.admin.Handle("GET /api/v1/cluster", http.HandlerFunc(b.apiCluster))
	b.admin.Handle("POST /api/v1/cluster/join", http.HandlerFunc(b.apiClusterJoin))
	b.admin.Handle("POST /api/v1/cluster/leave", http.HandlerFunc(b.apiClusterLeave))
	b.admin.Handle("POST /api/v1/cluster/forget/{name}", http.HandlerFunc(b.apiClusterForget))
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
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil || len(req.Seeds) == 0 {
		admin.WriteError(w, http.StatusBadRequest, errors.New(`body must be {"seeds": ["host:port", ...]}`))
		return
	}
	n, err := b.node.Join(req.Seeds)
	if err != nil {
		admin.WriteError(w, http.StatusBadGateway, err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, map[string]any{"ok": true, "contacted": n})
}

func (b *Broker) apiClusterLeave(w http.ResponseWriter, r *http.Request) {
	if b.node == nil {
		admin.WriteError(w, http.StatusConflict, errNoCluster)
		return
	}
	if err := b.node.Leave(5 * time.Second); err != nil {
		admin.WriteError(w, http.StatusInternalServerError, err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, map[string]any{"ok": true})
}

func (b *Broker) apiClusterForget(w http.ResponseWriter, r *http.Request) {
	if b.node == nil {
		admin.WriteError(w, http.StatusConflict, errNoCluster)
		return
	}
	if err := b.node.Forget(r.PathValue("name")); err != nil {
		admin.WriteError(w, http.StatusBadRequest, err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, map[string]any{"ok": true})
}
