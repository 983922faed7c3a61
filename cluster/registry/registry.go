// Package registry coordinates client-id registration so that one client
// id lives on one node: a CONNECT of client id C on node N is claimed with
// C's leader (rendezvous hash of C over the alive members), which remembers
// the new owner and takes the session over from the node that holds it
// (DESIGN §2). A persistent session moves to N; its old node hands over
// what it caught meanwhile (FinishTakeover, AppendSession).
//
// Every registration is stamped with a hybrid logical clock reading (the
// CONNECT's stamp, carried in the session record, see package hlc): the
// leader makes each stamp it grants later than the stamp of the session
// it replaces, so registrations the same leader ordered keep that order
// in the session table whatever the nodes' clocks say. Registrations no
// single leader ordered (one on each side of a netsplit) are ordered by
// their stamps when the table merges them (package sessions).
package registry

import (
	"context"
	"errors"
	"hash/fnv"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mendmq/mendmq/cluster/dataplane"
	"github.com/mendmq/mendmq/cluster/hlc"
	"github.com/mendmq/mendmq/cluster/membership"
	"github.com/mendmq/mendmq/cluster/rendezvous"
)

// Data-plane calls of registration (cluster protocol).
const (
	// CallRegister: claim -> takeover answer (at the client id's leader).
	CallRegister uint8 = 12
	// CallTakeover: claim -> exported session (at the session's node).
	CallTakeover uint8 = 13
	// CallHandoff: claim (new node) -> messages caught for the moved
	// session (at its old node).
	CallHandoff uint8 = 15
	// CallAppend: client id + messages -> empty: messages for a session
	// that moved here.
	CallAppend uint8 = 16
)

// Broker is what registration needs from the MQTT front.
type Broker interface {
	// TakeoverSession disconnects the local session of clientID, taken
	// over by newNode; with handoff it exports it (see cluster.Broker).
	TakeoverSession(clientID, newNode string, handoff bool) ([]byte, error)
	// FinishTakeover returns what was caught for a session newNode took.
	FinishTakeover(clientID, newNode string) ([]byte, error)
	// AppendSession adds messages caught by a session's old node.
	AppendSession(clientID string, msgs []byte) error
}

// Members is what registration needs from the members view.
type Members interface {
	// Alive lists the members that may lead: alive and reachable.
	Alive() []string
	State(name string) (membership.State, bool)
	// Reachable reports whether a netsplit keeps member name out of
	// reach.
	Reachable(name string) bool
}

// Caller is what registration needs from the data plane.
type Caller interface {
	Call(ctx context.Context, peer string, typ uint8, payload []byte) ([]byte, error)
}

// SessionNodes finds a session in the replicated session table: its node
// and its CONNECT stamp.
type SessionNodes interface {
	Owner(clientID string) (node string, at hlc.Timestamp, ok bool)
}

// Takeover is the outcome of a registration.
type Takeover struct {
	// From is the node the session was taken from, "" if none.
	From string
	// Session is the exported session, nil if none moved.
	Session []byte
	// At is the registration's stamp, later than the stamp of the
	// session it replaces: the new session record's Connect.
	At hlc.Timestamp
}

// Config configures a Registry.
type Config struct {
	Node string
	// RegisterTimeout bounds a claim a peer sends this leader
	// (cluster.register_timeout).
	RegisterTimeout time.Duration
	// Clock stamps registrations and observes the peers' stamps. Nil: a
	// clock of its own on time.Now.
	Clock  *hlc.Clock
	Logger *slog.Logger
}

// Registry is a node's part in registration: as a client's node it
// claims, as a client id's leader it decides.
type Registry struct {
	cfg      Config
	log      *slog.Logger
	broker   Broker
	members  Members
	calls    Caller
	sessions SessionNodes

	regMu   sync.Mutex
	owners  map[string]owner // client id -> its session, for ids this node leads
	claimMu [64]sync.Mutex   // per-client-id serialization of claims

	registrations, takeovers, badMessages atomic.Uint64
}

// owner is the session a leader last granted a client id to.
type owner struct {
	node string
	at   hlc.Timestamp
}

// New returns a Registry and registers its calls on mux.
func New(cfg Config, broker Broker, members Members, calls Caller, sessions SessionNodes, mux *dataplane.Mux) (*Registry, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = hlc.New(nil)
	}
	r := &Registry{cfg: cfg, log: cfg.Logger, broker: broker, members: members, calls: calls, sessions: sessions,
		owners: map[string]owner{}}
	if mux != nil {
		err := errors.Join(
			mux.HandleCallFunc(CallRegister, false, r.handleRegister),
			mux.HandleCallFunc(CallTakeover, false, r.handleTakeover),
			mux.HandleCallFunc(CallHandoff, false, r.handleHandoff),
			mux.HandleCallFunc(CallAppend, false, r.handleAppend),
		)
		if err != nil {
			return nil, err
		}
	}
	return r, nil
}

// SetSessions sets the session table (built after the Registry, since it
// tells the Registry about deleted records). Call before any Register.
func (r *Registry) SetSessions(s SessionNodes) { r.sessions = s }

// Counts returns registrations and cross-node takeovers so far, and the
// malformed calls received.
func (r *Registry) Counts() (registrations, takeovers, bad uint64) {
	return r.registrations.Load(), r.takeovers.Load(), r.badMessages.Load()
}

// Register claims clientID for this node with the client id's leader,
// which takes the session over from the node that holds it (see
// Broker.TakeoverSession; clean: the new connection discards it). The
// moved session, if any, comes back with the node it came from; once
// every node routes the session here, call FinishTakeover with that node.
func (r *Registry) Register(ctx context.Context, clientID string, clean bool) (Takeover, error) {
	r.registrations.Add(1)
	c := claim{ClientID: clientID, Node: r.cfg.Node, Clean: clean, At: r.cfg.Clock.Now()}
	leader := rendezvous.Pick(clientID, r.members.Alive())
	var tk Takeover
	var err error
	if leader == r.cfg.Node {
		tk, err = r.lead(ctx, c)
	} else {
		var b []byte
		if b, err = r.calls.Call(ctx, leader, CallRegister, c.append(nil)); err == nil {
			tk, err = decodeTakeover(b)
		}
	}
	if err != nil {
		return Takeover{}, err
	}
	r.cfg.Clock.Observe(tk.At)
	return tk, nil
}

// lead handles a claim as the client id's leader: it remembers the new
// owner, stamps the registration later than the session it replaces and
// takes that session over from its node.
func (r *Registry) lead(ctx context.Context, c claim) (Takeover, error) {
	mu := &r.claimMu[fnvIndex(c.ClientID, len(r.claimMu))]
	mu.Lock()
	defer mu.Unlock()
	r.cfg.Clock.Observe(c.At)
	prev := r.previous(c.ClientID)
	at := hlc.Max(c.At, prev.at.Next())
	r.regMu.Lock()
	r.owners[c.ClientID] = owner{node: c.Node, at: at}
	r.regMu.Unlock()
	tk := Takeover{At: at}
	if prev.node == "" || prev.node == c.Node {
		return tk, nil
	}
	if s, known := r.members.State(prev.node); !known || s == membership.Dead || s == membership.Left {
		r.log.Info("previous session's node is gone; session not moved", "client", c.ClientID, "node", prev.node)
		return tk, nil
	}
	if prev.node != r.cfg.Node && !r.members.Reachable(prev.node) {
		// Only while registering during a netsplit is allowed: the
		// client starts a session on this side, stamped later than the
		// unreachable one; the later stamp wins when the network heals
		// (sessions.Resolver) and the loser's node drops its copy.
		r.log.Warn("previous session's node is unreachable (netsplit); session not moved", "client", c.ClientID, "node", prev.node)
		return tk, nil
	}
	r.takeovers.Add(1)
	var blob []byte
	var err error
	if prev.node == r.cfg.Node {
		blob, err = r.broker.TakeoverSession(c.ClientID, c.Node, !c.Clean)
	} else {
		blob, err = r.calls.Call(ctx, prev.node, CallTakeover, c.append(nil))
	}
	if err != nil {
		return Takeover{}, err
	}
	tk.From, tk.Session = prev.node, blob
	return tk, nil
}

// previous returns the session a claim of clientID replaces: the one this
// leader granted last, or the session table's, whichever is later (the
// table knows of sessions other leaders granted, e.g. across a netsplit).
func (r *Registry) previous(clientID string) owner {
	r.regMu.Lock()
	o, ok := r.owners[clientID]
	r.regMu.Unlock()
	if node, at, found := r.sessions.Owner(clientID); found && (!ok || o.at.Less(at)) {
		o = owner{node: node, at: at}
	}
	return o
}

// Observe tells the registry about a session record a peer wrote: a
// leader that granted the client id to an earlier session (e.g. on its
// side of a netsplit, which lost at the heal) follows the table.
func (r *Registry) Observe(clientID, node string, at hlc.Timestamp) {
	r.regMu.Lock()
	if o, ok := r.owners[clientID]; ok && o.at.Less(at) {
		r.owners[clientID] = owner{node: node, at: at}
	}
	r.regMu.Unlock()
}

// FinishTakeover tells from, the node a session was taken from (see
// Register), that every node now routes clientID's messages here, and
// returns the messages it caught for the session in the meantime.
func (r *Registry) FinishTakeover(ctx context.Context, from, clientID string) ([]byte, error) {
	if from == r.cfg.Node {
		return r.broker.FinishTakeover(clientID, r.cfg.Node)
	}
	return r.calls.Call(ctx, from, CallHandoff, claim{ClientID: clientID, Node: r.cfg.Node}.append(nil))
}

// AppendSession sends messages for clientID, whose session moved to
// node, to that node (Broker.AppendSession there).
func (r *Registry) AppendSession(ctx context.Context, node, clientID string, msgs []byte) error {
	if node == r.cfg.Node {
		return r.broker.AppendSession(clientID, msgs)
	}
	_, err := r.calls.Call(ctx, node, CallAppend, appendSessionMsgs(nil, clientID, msgs))
	return err
}

// Forget drops the leader's entry for a client id whose session record
// was deleted.
func (r *Registry) Forget(clientID string) {
	r.regMu.Lock()
	delete(r.owners, clientID)
	r.regMu.Unlock()
}

// ForgetOthers drops every entry naming another node (this node left).
func (r *Registry) ForgetOthers() {
	r.regMu.Lock()
	maps.DeleteFunc(r.owners, func(_ string, o owner) bool { return o.node != r.cfg.Node })
	r.regMu.Unlock()
}

func (r *Registry) handleRegister(from string, payload []byte) ([]byte, error) {
	c, err := decodeClaim(payload)
	if err != nil {
		r.badMessages.Add(1)
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.RegisterTimeout)
	defer cancel()
	tk, err := r.lead(ctx, c)
	if err != nil {
		return nil, err
	}
	return appendTakeover(nil, tk), nil
}

func (r *Registry) handleTakeover(from string, payload []byte) ([]byte, error) {
	c, err := decodeClaim(payload)
	if err != nil {
		r.badMessages.Add(1)
		return nil, err
	}
	return r.broker.TakeoverSession(c.ClientID, c.Node, !c.Clean)
}

func (r *Registry) handleHandoff(from string, payload []byte) ([]byte, error) {
	c, err := decodeClaim(payload)
	if err != nil {
		r.badMessages.Add(1)
		return nil, err
	}
	return r.broker.FinishTakeover(c.ClientID, c.Node)
}

func (r *Registry) handleAppend(from string, payload []byte) ([]byte, error) {
	id, msgs, err := decodeSessionMsgs(payload)
	if err != nil {
		r.badMessages.Add(1)
		return nil, err
	}
	return nil, r.broker.AppendSession(id, msgs)
}

func fnvIndex(s string, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(s))
	return int(h.Sum32() % uint32(n))
}
