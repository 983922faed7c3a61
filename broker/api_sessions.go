package broker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/admin"
	"github.com/mendmq/mendmq/cluster"
)

// Sessions and subscriptions of the admin API. They read this node's mochi
// state: the cluster's session table places every client id on a node
// (SessionNode), but offers no listing yet, so a list covers this node's
// sessions ("scope": "node"). One session on another node is fetched from
// that node (show, kick). When the cluster exposes a listing, the same
// answer can carry "scope": "cluster".

// Limits of a listing: default and maximum "limit".
const (
	defaultListLimit = 1000
	maxListLimit     = 100000
)

// SessionInfo is one session in GET /api/v1/sessions and
// /api/v1/sessions/show.
type SessionInfo struct {
	ClientID  string `json:"client_id"`
	Node      string `json:"node"`
	Connected bool   `json:"connected"`
	Username  string `json:"username,omitempty"`
	Protocol  byte   `json:"protocol"` // 3, 4 (3.1.1) or 5
	Remote    string `json:"remote,omitempty"`
	Listener  string `json:"listener,omitempty"`
	// Clean: the session ends with its connection.
	Clean bool `json:"clean"`
	// ExpiryInterval is the v5 session expiry interval in seconds.
	ExpiryInterval uint32 `json:"expiry_interval,omitempty"`
	// DisconnectedAt is when a kept session's client went away.
	DisconnectedAt *time.Time `json:"disconnected_at,omitempty"`
	// Queued counts the QoS 1/2 messages stored for the session (waiting
	// for a disconnected client, or sent and not yet acknowledged).
	Queued        int                `json:"queued"`
	Subscriptions int                `json:"subscriptions"`
	Subs          []SubscriptionInfo `json:"subs,omitempty"` // show only
	// Via is the node that answered the request when another one (Node)
	// holds the session and was asked for it (show only).
	Via string `json:"via,omitempty"`
}

// SessionList is the answer of GET /api/v1/sessions.
type SessionList struct {
	Node string `json:"node"`
	// Scope is "node": the sessions of the answering node.
	Scope     string        `json:"scope"`
	Sessions  []SessionInfo `json:"sessions"`
	Truncated bool          `json:"truncated"`
}

// SubscriptionInfo is one subscription.
type SubscriptionInfo struct {
	ClientID          string `json:"client_id"`
	Filter            string `json:"filter"` // as subscribed, "$share/g/f" included
	QoS               byte   `json:"qos"`
	NoLocal           bool   `json:"no_local,omitempty"`
	RetainAsPublished bool   `json:"retain_as_published,omitempty"`
	RetainHandling    byte   `json:"retain_handling,omitempty"`
	Identifier        int    `json:"identifier,omitempty"`
}

// SubscriptionList is the answer of GET /api/v1/subscriptions.
type SubscriptionList struct {
	Node          string             `json:"node"`
	Scope         string             `json:"scope"`
	Subscriptions []SubscriptionInfo `json:"subscriptions"`
	Truncated     bool               `json:"truncated"`
	// ClusterCounts is the number of subscriptions per node from the
	// cluster's routing table (absent without clustering).
	ClusterCounts map[string]int `json:"cluster_counts,omitempty"`
}

// localClients returns this node's sessions sorted by client id, without
// the shadows of sessions handed off to another node.
func (b *Broker) localClients() []*mqtt.Client {
	all := b.server.Clients.GetAll()
	out := make([]*mqtt.Client, 0, len(all))
	for id, cl := range all {
		if cl.Net.Inline || (b.chook != nil && !b.chook.Session.LocalSession(id)) {
			continue
		}
		out = append(out, cl)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (b *Broker) sessionInfo(cl *mqtt.Client, withSubs bool) SessionInfo {
	subs := cl.State.Subscriptions.GetAll()
	si := SessionInfo{
		ClientID:       cl.ID,
		Node:           b.cfg.Node.Name,
		Connected:      !cl.Closed(),
		Username:       string(cl.Properties.Username),
		Protocol:       cl.Properties.ProtocolVersion,
		Remote:         cl.Net.Remote,
		Listener:       cl.Net.Listener,
		Clean:          cl.Properties.Clean,
		Queued:         cl.State.Inflight.Len(),
		Subscriptions:  len(subs),
		ExpiryInterval: cl.Properties.Props.SessionExpiryInterval,
	}
	if t := cl.StopTime(); t > 0 && !si.Connected {
		at := time.Unix(t, 0).UTC()
		si.DisconnectedAt = &at
	}
	if withSubs {
		si.Subs = subscriptionInfos(cl.ID, subs)
	}
	return si
}

func subscriptionInfos(id string, subs map[string]packets.Subscription) []SubscriptionInfo {
	out := make([]SubscriptionInfo, 0, len(subs))
	for _, s := range subs {
		out = append(out, SubscriptionInfo{ClientID: id, Filter: s.Filter, QoS: s.Qos, NoLocal: s.NoLocal,
			RetainAsPublished: s.RetainAsPublished, RetainHandling: s.RetainHandling, Identifier: s.Identifier})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Filter < out[j].Filter })
	return out
}

// apiSessions lists this node's sessions: ?prefix= (client id prefix),
// ?state=connected|disconnected, ?node= (must name this node), ?limit=.
func (b *Broker) apiSessions(w http.ResponseWriter, r *http.Request) {
	q, ok := admin.Query(w, r, "prefix", "state", "node", "limit")
	if !ok {
		return
	}
	limit, ok := admin.Limit(w, q["limit"], defaultListLimit, maxListLimit)
	if !ok {
		return
	}
	switch q["state"] {
	case "", "connected", "disconnected":
	default:
		admin.WriteError(w, http.StatusBadRequest, fmt.Errorf("state=%q: want connected or disconnected", q["state"]))
		return
	}
	if n := q["node"]; n != "" && n != b.cfg.Node.Name {
		admin.WriteJSON(w, http.StatusConflict, map[string]string{
			"error": fmt.Sprintf("this is node %s; it lists its own sessions only: ask %s's admin API", b.cfg.Node.Name, n),
			"node":  n,
		})
		return
	}
	out := SessionList{Node: b.cfg.Node.Name, Scope: "node", Sessions: []SessionInfo{}}
	for _, cl := range b.localClients() {
		if !strings.HasPrefix(cl.ID, q["prefix"]) {
			continue
		}
		if st := q["state"]; st != "" && (st == "connected") == cl.Closed() {
			continue
		}
		if len(out.Sessions) == limit {
			out.Truncated = true
			break
		}
		out.Sessions = append(out.Sessions, b.sessionInfo(cl, false))
	}
	admin.WriteJSON(w, http.StatusOK, out)
}

// apiSessionShow answers one session with its subscriptions:
// ?client_id=ID, wherever in the cluster it lives (showElsewhere).
func (b *Broker) apiSessionShow(w http.ResponseWriter, r *http.Request) {
	q, ok := admin.Query(w, r, "client_id")
	if !ok {
		return
	}
	id := q["client_id"]
	if id == "" {
		admin.WriteError(w, http.StatusBadRequest, errors.New("client_id is required: /api/v1/sessions/show?client_id=ID"))
		return
	}
	cl, ok := b.server.Clients.Get(id)
	if !ok || (b.chook != nil && !b.chook.Session.LocalSession(id)) {
		b.showElsewhere(w, r, id)
		return
	}
	admin.WriteJSON(w, http.StatusOK, b.sessionInfo(cl, true))
}

// KickRequest is the body of POST /api/v1/sessions/kick.
type KickRequest struct {
	ClientID string `json:"client_id"`
}

// KickResult is its answer.
type KickResult struct {
	OK       bool   `json:"ok"`
	ClientID string `json:"client_id"`
	Node     string `json:"node"`
	// Kicked is false when the client was not connected (its kept
	// session stays until it expires).
	Kicked bool `json:"kicked"`
}

// apiSessionKick disconnects a client of this node: v5 clients get
// DISCONNECT 0x98 (administrative action). Its session stays if it is a
// persistent one, as after any disconnect.
func (b *Broker) apiSessionKick(w http.ResponseWriter, r *http.Request) {
	var req KickRequest
	if !admin.DecodeJSON(w, r, &req) {
		return
	}
	if req.ClientID == "" {
		admin.WriteError(w, http.StatusBadRequest, errors.New(`client_id is required: {"client_id": "ID"}`))
		return
	}
	cl, ok := b.server.Clients.Get(req.ClientID)
	if !ok || (b.chook != nil && !b.chook.Session.LocalSession(req.ClientID)) {
		b.kickElsewhere(w, r, req.ClientID)
		return
	}
	res := KickResult{OK: true, ClientID: req.ClientID, Node: b.cfg.Node.Name}
	if !cl.Closed() {
		b.log.Info("client kicked through the admin API", "client", req.ClientID, "remote", r.RemoteAddr)
		_ = b.server.DisconnectClient(cl, packets.ErrAdministrativeAction)
		cl.Stop(packets.ErrAdministrativeAction)
		res.Kicked = true
	}
	admin.WriteJSON(w, http.StatusOK, res)
}

// kickElsewhere kicks a client whose session the session table places on
// another node, through that node.
func (b *Broker) kickElsewhere(w http.ResponseWriter, r *http.Request, clientID string) {
	if b.node == nil {
		admin.WriteError(w, http.StatusNotFound, fmt.Errorf("no session for client %q", clientID))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	node, kicked, err := b.node.Kick(ctx, clientID)
	switch {
	case errors.Is(err, cluster.ErrNoSession):
		admin.WriteError(w, http.StatusNotFound, fmt.Errorf("no session for client %q", clientID))
	case err != nil:
		admin.WriteJSON(w, http.StatusBadGateway, map[string]string{"error": err.Error(), "node": node})
	default:
		b.log.Info("client kicked through the admin API", "client", clientID, "node", node, "remote", r.RemoteAddr, "kicked", kicked)
		admin.WriteJSON(w, http.StatusOK, KickResult{OK: true, ClientID: clientID, Node: node, Kicked: kicked})
	}
}

// apiSubscriptions lists this node's subscriptions: ?client_prefix=,
// ?filter_prefix=, ?matches=TOPIC (filters that match the topic), ?limit=.
func (b *Broker) apiSubscriptions(w http.ResponseWriter, r *http.Request) {
	q, ok := admin.Query(w, r, "client_prefix", "filter_prefix", "matches", "limit")
	if !ok {
		return
	}
	limit, ok := admin.Limit(w, q["limit"], defaultListLimit, maxListLimit)
	if !ok {
		return
	}
	if m, ok := q["matches"]; ok && (m == "" || strings.ContainsAny(m, "+#")) {
		admin.WriteError(w, http.StatusBadRequest, fmt.Errorf("matches=%q: want a topic name (no wildcards)", m))
		return
	}
	out := SubscriptionList{Node: b.cfg.Node.Name, Scope: "node", Subscriptions: []SubscriptionInfo{}}
	if b.node != nil {
		out.ClusterCounts = b.node.Status().Subscriptions
	}
outer:
	for _, cl := range b.localClients() {
		if !strings.HasPrefix(cl.ID, q["client_prefix"]) {
			continue
		}
		for _, s := range subscriptionInfos(cl.ID, cl.State.Subscriptions.GetAll()) {
			if !strings.HasPrefix(s.Filter, q["filter_prefix"]) {
				continue
			}
			if t, ok := q["matches"]; ok && !filterMatches(s.Filter, t) {
				continue
			}
			if len(out.Subscriptions) == limit {
				out.Truncated = true
				break outer
			}
			out.Subscriptions = append(out.Subscriptions, s)
		}
	}
	admin.WriteJSON(w, http.StatusOK, out)
}

// filterMatches reports whether the subscription filter (possibly
// "$share/group/filter") matches topic, with the '$' rule of
// [MQTT-4.7.2-1]: a wildcard first level does not match a '$' topic.
func filterMatches(filter, topic string) bool {
	if rest, ok := strings.CutPrefix(filter, "$share/"); ok {
		_, f, found := strings.Cut(rest, "/")
		if !found {
			return false
		}
		filter = f
	}
	fl, tl := strings.Split(filter, "/"), strings.Split(topic, "/")
	if strings.HasPrefix(topic, "$") && (fl[0] == "+" || fl[0] == "#") {
		return false
	}
	for i, f := range fl {
		if f == "#" {
			return true
		}
		if i >= len(tl) || (f != "+" && f != tl[i]) {
			return false
		}
	}
	return len(fl) == len(tl)
}
