package partitiontests

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// Client timing.
const (
	dialTimeout    = 3 * time.Second
	connectTimeout = 8 * time.Second // > cluster.register_timeout (5s)
	// publishTimeout bounds the wait for a PUBACK: longer than
	// cluster.forward_timeout (5s), after which the node answers.
	publishTimeout = 15 * time.Second
	keepAlive      = 10 // seconds
	sessionExpiry  = 3600
	retryMin       = 50 * time.Millisecond
	retryMax       = time.Second
	subscribeBound = 30 * time.Second // every subscriber subscribed and routed
)

// WorkloadOptions shape a Workload. Zero values take the defaults.
type WorkloadOptions struct {
	// PublishersPerNode: QoS 1 publishers connected to each node
	// (default 2), each publishing every Interval (default 25ms) as fast
	// as acks allow.
	PublishersPerNode int
	Interval          time.Duration
	// RetainedEvery: every k-th publish of a publisher is a retained one
	// on rt/<seq % RetainedTopics> (no subscriber matches it); 0 = none.
	// Publishers on both sides of a split writing the same topics make
	// retained conflicts for the heal to resolve.
	RetainedEvery  int
	RetainedTopics int
	// Roamers: publishers with persistent sessions that move to another
	// random node every few publishes (the client registry's work).
	Roamers int
	// MovingSubscribers: persistent subscribers m<k> on pt/+/<k>/#
	// (k wrapping over the nodes), starting on node k; Workload.Move
	// reconnects one on another node (its session moves there).
	MovingSubscribers int
	// Seed seeds the roamers' choices.
	Seed uint64
}

// Workload is a set of MQTT v5 clients, all in the root namespace, that
// record what they see into History:
//
//   - per node i, two persistent subscribers (clean start once, then
//     resumed; session expiry one hour): s<i>a on pt/+/<i>/# and s<i>b on
//     pt/+/<i+1>/# (wrapping), so each target node's messages have
//     subscribers on two nodes;
//   - per node, PublishersPerNode publishers p<i>-<k> that publish QoS 1
//     to pt/<i>/<target>/<client>, the target rotating over the nodes,
//     with the message id as payload;
//   - Roamers r<k> that publish likewise from a node they change.
//
// Subscribers subscribe, and every node's routes count their
// subscriptions, before any publisher starts; so the checker's rule
// (SUBACK before the publish was sent) is not blurred by replication.
type Workload struct {
	t    testing.TB
	c    *Cluster
	H    *History
	opts WorkloadOptions

	Subs []*Subscriber
	pubs []*publisher

	stopPubs chan struct{}
	closing  chan struct{}
	pubWG    sync.WaitGroup
	subWG    sync.WaitGroup
	once     sync.Once
}

// StartWorkload connects and subscribes the subscribers, waits for every
// node to route to them, and starts the publishers. It stops everything
// at cleanup.
func StartWorkload(t testing.TB, c *Cluster, o WorkloadOptions) *Workload {
	t.Helper()
	if o.PublishersPerNode == 0 {
		o.PublishersPerNode = 2
	}
	if o.Interval == 0 {
		o.Interval = 25 * time.Millisecond
	}
	if o.RetainedTopics == 0 {
		o.RetainedTopics = 4
	}
	w := &Workload{t: t, c: c, H: &History{}, opts: o, stopPubs: make(chan struct{}), closing: make(chan struct{})}
	t.Cleanup(w.Close)
	n := len(c.Nodes)
	for _, nd := range c.Nodes {
		next := nd.I%n + 1
		for _, s := range []struct{ suffix, filter string }{
			{"a", fmt.Sprintf("pt/+/%d/#", nd.I)},
			{"b", fmt.Sprintf("pt/+/%d/#", next)},
		} {
			w.addSubscriber(fmt.Sprintf("s%d%s", nd.I, s.suffix), nd, s.filter, false)
		}
	}
	for k := 1; k <= o.MovingSubscribers; k++ {
		nd := c.Nodes[(k-1)%n]
		w.addSubscriber(fmt.Sprintf("m%d", k), nd, fmt.Sprintf("pt/+/%d/#", nd.I), true)
	}
	deadline := time.After(subscribeBound)
	for _, s := range w.Subs {
		select {
		case <-s.subscribed:
		case <-deadline:
			t.Fatalf("subscriber %s on %s not subscribed within %v", s.ID, s.Node().Name, subscribeBound)
		}
	}
	want := map[string]int{}
	for _, s := range w.Subs {
		want[s.Node().Name]++
	}
	if d, ok := c.Until(subscribeBound, func() (bool, string) {
		sts, err := c.Statuses()
		if err != nil {
			return false, err.Error()
		}
		for _, st := range sts {
			got := maps.Clone(st.Subscriptions)
			maps.DeleteFunc(got, func(_ string, v int) bool { return v == 0 })
			if !maps.Equal(got, want) {
				return false, fmt.Sprintf("%s routes %v, want %v", st.Node, got, want)
			}
		}
		return true, ""
	}); !ok {
		t.Fatalf("routes did not converge within %v: %s", subscribeBound, d)
	}
	rng := rand.New(rand.NewPCG(o.Seed, 0x5eed))
	for _, nd := range c.Nodes {
		for k := 1; k <= o.PublishersPerNode; k++ {
			w.startPublisher(&publisher{id: fmt.Sprintf("p%d-%d", nd.I, k), node: nd})
		}
	}
	for k := 1; k <= o.Roamers; k++ {
		w.startPublisher(&publisher{id: fmt.Sprintf("r%d", k), node: c.Nodes[rng.IntN(n)], roam: true,
			rng: rand.New(rand.NewPCG(rng.Uint64(), uint64(k)))})
	}
	return w
}

func (w *Workload) addSubscriber(id string, nd *Node, filter string, moving bool) {
	sub := &Subscriber{ID: id, Filter: filter, Moving: moving, node: nd, w: w,
		bounce: make(chan bounce, 1), resume: make(chan *Node, 1), subscribed: make(chan struct{})}
	w.Subs = append(w.Subs, sub)
	w.subWG.Add(1)
	go sub.run()
}

func (w *Workload) startPublisher(p *publisher) {
	p.w = w
	w.pubs = append(w.pubs, p)
	w.pubWG.Add(1)
	go p.run()
}

// WaitAcked waits until at least n more publishes than now were acked,
// up to d; it reports whether they were.
func (w *Workload) WaitAcked(n int, d time.Duration) bool {
	base, _, _ := w.H.Counts()
	_, ok := until(d, func() (bool, string) {
		a, _, _ := w.H.Counts()
		return a >= base+n, ""
	})
	return ok
}

// StopPublishers stops the publishers and waits for their last publish
// (each bounded by publishTimeout).
func (w *Workload) StopPublishers() {
	select {
	case <-w.stopPubs:
	default:
		close(w.stopPubs)
	}
	w.pubWG.Wait()
}

// Close stops every client. Subscribers disconnect normally, which keeps
// their sessions.
func (w *Workload) Close() {
	w.once.Do(func() {
		w.StopPublishers()
		close(w.closing)
		w.subWG.Wait()
	})
}

// Bounce disconnects subscriber s and reconnects it (clean start = false)
// after pause: its session keeps what is published meanwhile.
func (w *Workload) Bounce(s *Subscriber, pause time.Duration) {
	w.Move(s, nil, pause)
}

// Move disconnects subscriber s and, after pause, reconnects it (clean
// start = false) to node to (nil: the same node): the cluster moves its
// session there with what was queued.
func (w *Workload) Move(s *Subscriber, to *Node, pause time.Duration) {
	select {
	case s.bounce <- bounce{pause: pause, to: to}:
	default: // a bounce is pending already
	}
}

// Park disconnects subscriber s and keeps it offline until Resume: its
// session queues what is published meanwhile.
func (w *Workload) Park(s *Subscriber) {
	select {
	case s.bounce <- bounce{park: true}:
	default:
	}
}

// Resume reconnects a parked subscriber, to node to (nil: the same
// node).
func (w *Workload) Resume(s *Subscriber, to *Node) {
	select {
	case s.resume <- to:
	default:
	}
}

type bounce struct {
	pause time.Duration
	to    *Node
	park  bool // offline until Resume
}

// Subscriber is one persistent subscriber of one filter.
type Subscriber struct {
	ID     string
	Filter string
	// Moving subscribers may be moved to another node (Workload.Move);
	// the others stay on theirs.
	Moving bool

	w          *Workload
	bounce     chan bounce
	resume     chan *Node
	subscribed chan struct{}
	once       sync.Once

	mu        sync.Mutex
	node      *Node
	connected bool
}

// Node is the node the subscriber connects to.
func (s *Subscriber) Node() *Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.node
}

// Connected reports whether the subscriber is connected now.
func (s *Subscriber) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connected
}

func (s *Subscriber) setConnected(v bool) {
	s.mu.Lock()
	s.connected = v
	s.mu.Unlock()
}

func (s *Subscriber) run() {
	defer s.w.subWG.Done()
	h := s.w.H
	first, haveSub := true, false
	pause := retryMin
	for {
		select {
		case <-s.w.closing:
			return
		default:
		}
		node := s.Node()
		cl, ca, err := connect(node, s.ID, first, func(pb *paho.Publish) {
			h.AddDelivery(Delivery{Client: s.ID, ID: string(pb.Payload), Topic: pb.Topic, At: time.Now()})
		})
		if err != nil {
			h.AddEvent(Event{At: time.Now(), Client: s.ID, Node: node.I, What: "connect: " + err.Error()})
			if !sleepOr(s.w.closing, pause) {
				return
			}
			pause = min(2*pause, retryMax)
			continue
		}
		pause = retryMin
		if !first && haveSub && !ca.SessionPresent {
			now := time.Now()
			h.AddEvent(Event{At: now, Client: s.ID, Node: node.I, What: EventSessionLost})
			h.EndSubscriptions(s.ID, now)
			haveSub = false
		}
		first = false
		s.setConnected(true)
		if !haveSub {
			haveSub = s.subscribe(cl, node)
			if haveSub {
				s.once.Do(func() { close(s.subscribed) })
			}
		}
		if !haveSub {
			// Refused (gated) or connection lost: try again on a new
			// connection after a pause.
			_ = cl.Disconnect(&paho.Disconnect{ReasonCode: 0})
			s.setConnected(false)
			if !sleepOr(s.w.closing, pause) {
				return
			}
			continue
		}
		select {
		case <-cl.Done():
			s.setConnected(false)
			h.AddEvent(Event{At: time.Now(), Client: s.ID, Node: node.I, What: "connection lost"})
		case b := <-s.bounce:
			_ = cl.Disconnect(&paho.Disconnect{ReasonCode: 0})
			s.setConnected(false)
			if b.park {
				h.AddEvent(Event{At: time.Now(), Client: s.ID, Node: node.I, What: "parked"})
				select {
				case b.to = <-s.resume:
				case <-s.w.closing:
					return
				}
			}
			if b.to != nil {
				s.mu.Lock()
				s.node = b.to
				s.mu.Unlock()
				h.AddEvent(Event{At: time.Now(), Client: s.ID, Node: b.to.I, What: fmt.Sprintf("moving from n%d", node.I)})
			}
			if !sleepOr(s.w.closing, b.pause) {
				return
			}
		case <-s.w.closing:
			_ = cl.Disconnect(&paho.Disconnect{ReasonCode: 0})
			s.setConnected(false)
			return
		}
	}
}

// subscribe subscribes at QoS 1 and records the grant.
func (s *Subscriber) subscribe(cl *paho.Client, node *Node) bool {
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	sa, err := cl.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: s.Filter, QoS: 1}}})
	now := time.Now()
	if sa != nil && len(sa.Reasons) == 1 && sa.Reasons[0] < 0x80 {
		s.w.H.AddSubscription(Subscription{Client: s.ID, Node: node.I, Filter: s.Filter, Acked: now})
		return true
	}
	what := fmt.Sprintf("subscribe %s: %v", s.Filter, err)
	if sa != nil && len(sa.Reasons) == 1 {
		what = fmt.Sprintf("subscribe %s: SUBACK 0x%02x", s.Filter, sa.Reasons[0])
	}
	s.w.H.AddEvent(Event{At: now, Client: s.ID, Node: node.I, What: what})
	return false
}

// publisher publishes QoS 1 messages with unique ids.
type publisher struct {
	w    *Workload
	id   string
	node *Node
	roam bool
	rng  *rand.Rand // roamers only
}

func (p *publisher) run() {
	defer p.w.pubWG.Done()
	w, h := p.w, p.w.H
	n := len(w.c.Nodes)
	tick := time.NewTicker(w.opts.Interval)
	defer tick.Stop()
	var cl *paho.Client
	defer func() {
		if cl != nil {
			_ = cl.Disconnect(&paho.Disconnect{ReasonCode: 0})
		}
	}()
	pause := retryMin
	seq, untilMove := 0, 0
	for {
		select {
		case <-w.stopPubs:
			return
		case <-tick.C:
		}
		if cl != nil && p.roam && untilMove <= 0 {
			_ = cl.Disconnect(&paho.Disconnect{ReasonCode: 0})
			cl = nil
			p.node = w.c.Nodes[p.rng.IntN(n)]
		}
		if cl == nil {
			var err error
			cl, _, err = connect(p.node, p.id, !p.roam, nil)
			if err != nil {
				cl = nil
				h.AddEvent(Event{At: time.Now(), Client: p.id, Node: p.node.I, What: "connect: " + err.Error()})
				if p.roam {
					p.node = w.c.Nodes[p.rng.IntN(n)]
				}
				if !sleepOr(w.stopPubs, pause) {
					return
				}
				pause = min(2*pause, retryMax)
				continue
			}
			pause = retryMin
			if p.roam {
				untilMove = 5 + p.rng.IntN(20)
			}
		}
		seq++
		untilMove--
		rec := Publish{ID: fmt.Sprintf("%s-%d", p.id, seq), Client: p.id, Node: p.node.I}
		if k := w.opts.RetainedEvery; k > 0 && seq%k == 0 {
			rec.Topic, rec.Retain = fmt.Sprintf("rt/%d", seq%w.opts.RetainedTopics), true
		} else {
			rec.Topic = fmt.Sprintf("pt/%d/%d/%s", p.node.I, seq%n+1, p.id)
		}
		ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
		rec.Sent = time.Now()
		pr, err := cl.Publish(ctx, &paho.Publish{Topic: rec.Topic, QoS: 1, Retain: rec.Retain, Payload: []byte(rec.ID)})
		rec.Done = time.Now()
		cancel()
		switch {
		case pr != nil && pr.ReasonCode < 0x80:
			rec.Outcome, rec.Code = Acked, pr.ReasonCode
		case pr != nil:
			rec.Outcome, rec.Code = Refused, pr.ReasonCode
		default:
			rec.Outcome, rec.Err = Failed, fmt.Sprint(err)
		}
		h.AddPublish(rec)
		select {
		case <-cl.Done():
			cl = nil
		default:
		}
	}
}

// connect opens a v5 connection to node as clientID: clean start or a
// resumed session (expiry one hour). onMsg, if set, sees every PUBLISH
// received (acknowledged after it returns). A refusing CONNACK is an
// error naming its code.
func connect(node *Node, clientID string, clean bool, onMsg func(*paho.Publish)) (*paho.Client, *paho.Connack, error) {
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	d := net.Dialer{Timeout: dialTimeout}
	conn, err := d.DialContext(ctx, "tcp", node.MQTTAddr())
	if err != nil {
		return nil, nil, err
	}
	cfg := paho.ClientConfig{ClientID: clientID, Conn: boundedConn{conn, new(sync.Mutex)}, PacketTimeout: publishTimeout,
		OnClientError: func(error) {}, OnServerDisconnect: func(*paho.Disconnect) {}}
	if onMsg != nil {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			onMsg(pr.Packet)
			return true, nil
		}}
	}
	cl := paho.NewClient(cfg)
	exp := uint32(sessionExpiry)
	ca, err := cl.Connect(ctx, &paho.Connect{ClientID: clientID, KeepAlive: keepAlive, CleanStart: clean,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &exp}})
	if err != nil {
		_ = conn.Close()
		if ca != nil && ca.ReasonCode >= 0x80 {
			return nil, ca, fmt.Errorf("CONNACK 0x%02x", ca.ReasonCode)
		}
		return nil, nil, err
	}
	return cl, ca, nil
}

// boundedConn bounds every write (paho's DISCONNECT and acks have no
// deadline of their own). paho writes a packet as several buffers, in
// one writev only on a bare *net.TCPConn; on a wrapper it locks the conn
// if it is a sync.Locker, else the pinger's PINGREQ can land inside
// another packet (seen: a PUBLISH payload starting with C0 00).
type boundedConn struct {
	net.Conn
	*sync.Mutex
}

func (c boundedConn) Write(b []byte) (int, error) {
	_ = c.SetWriteDeadline(time.Now().Add(connectTimeout))
	return c.Conn.Write(b)
}

// sleepOr pauses for d unless done closes first; it reports whether the
// pause ran out (a retry back-off, not a wait for an event).
func sleepOr(done <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return false
	case <-t.C:
		return true
	}
}

// Twin is one client id connected to several nodes at once, each
// connection left alone (no reconnect): the duplicate clients a split
// lets in when CONNECT is allowed on both sides. After the heal at most
// one may stay connected.
type Twin struct {
	ID    string
	conns []twinConn
}

type twinConn struct {
	node *Node
	cl   *paho.Client
}

// Twin connects id to each node in turn (clean start = false, so each
// side keeps a persistent session), records each CONNACK or error as an
// event, and closes the connections at cleanup. It returns the nodes
// that accepted.
func (w *Workload) Twin(id string, nodes ...*Node) (*Twin, []string) {
	tw := &Twin{ID: id}
	var accepted []string
	for _, n := range nodes {
		cl, ca, err := connect(n, id, false, nil)
		what := "twin connected"
		if err != nil {
			what = "twin refused: " + err.Error()
		} else if ca.SessionPresent {
			what += " (session present)"
		}
		w.H.AddEvent(Event{At: time.Now(), Client: id, Node: n.I, What: what})
		if err == nil {
			tw.conns = append(tw.conns, twinConn{node: n, cl: cl})
			accepted = append(accepted, n.Name)
		}
	}
	w.t.Cleanup(func() {
		for _, c := range tw.conns {
			_ = c.cl.Disconnect(&paho.Disconnect{ReasonCode: 0})
		}
	})
	return tw, accepted
}

// Open lists the nodes whose connection of the twin is still open.
func (tw *Twin) Open() []string {
	var out []string
	for _, c := range tw.conns {
		select {
		case <-c.cl.Done():
		default:
			out = append(out, c.node.Name)
		}
	}
	return out
}
