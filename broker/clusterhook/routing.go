package clusterhook

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mendmq/mendmq/broker/mochix"
	"github.com/mendmq/mendmq/cluster"
)

// RoutingHook forwards the publishes of local clients to the nodes with
// matching subscribers and delivers what other nodes forward here.
type RoutingHook struct {
	mqtt.HookBase
	sh *shared
	// The deadline of QoS 1/2 forwards (forwardContext).
	fwdDeadline atomic.Pointer[forwardDeadline]
}

var _ mqtt.Hook = (*RoutingHook)(nil)

// ID names the hook.
func (r *RoutingHook) ID() string { return "mendmq-cluster-routing" }

// Provides declares the handled hook methods.
func (r *RoutingHook) Provides(b byte) bool {
	return b == mqtt.OnPublish || b == mqtt.OnSelectSubscribers || b == mqtt.OnStarted
}

// ErrNotServing refuses a forwarded publish that arrives before the MQTT
// server serves. The cluster node starts first (a node joins before its
// listeners accept clients), and the sessions stored before a restart
// are only in the server once it serves: delivered earlier, a message for
// them would reach nobody, and its publisher has an ack. Refused, it is
// refused to its publisher (a forward) or held and retried (a held
// message, a publish accepted during a netsplit).
var ErrNotServing = errors.New("clusterhook: the MQTT server is not serving yet")

// OnStarted marks the server as serving: stored sessions are restored,
// forwarded publishes are delivered from now on.
func (r *RoutingHook) OnStarted() { r.sh.serving.Store(true) }

// OnPublish forwards a client's publish to the other nodes. QoS 1/2
// publishes are acknowledged to the client only after every target node
// accepted them; if one did not, the publish is refused (broker/refuse:
// v5 PUBACK/PUBREC 0x83, v3 disconnected without an ack so it resends).
// While the node is split (the netsplit gate let the publish through:
// allow_publish_during_netsplit, or the majority side), the nodes that
// cannot be reached are not waited for: the publish is held for them
// (cluster.ForwardHold), so the ack means "delivered or held"; a publish
// that cannot be held is refused with 0x97 quota exceeded.
// QoS 0 is delivered locally whatever happened to the forward.
func (r *RoutingHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	c := r.sh.cluster()
	if c == nil || cl.Net.Inline || strings.HasPrefix(pk.TopicName, "$SYS") {
		return pk, nil
	}
	qos := pk.FixedHeader.Qos
	// QoS 0 forwards are queued without waiting: no deadline on that
	// path, which is the hottest one.
	ctx := context.Background()
	if qos > 0 {
		ctx = r.forwardContext()
	}
	id := r.sh.nextID.Add(1)
	// The id rides in the packet to mochi's local deliveries, which
	// follow on this goroutine (the handoff knows them by it).
	mochix.Stamp(&pk, c.Name(), id)
	enc := publishEncoders.Get().(*publishEncoder)
	enc.pk = pk
	defer func() {
		enc.pk = packets.Packet{}
		publishEncoders.Put(enc)
	}()
	// While split (and the gate let the publish through), the publish
	// must not wait for the unreachable nodes: it is held for them.
	split := c.Split()
	var err error
	if split {
		err = c.ForwardHold(ctx, pk.TopicName, qos, id, enc.encode)
	} else {
		err = c.Forward(ctx, pk.TopicName, qos, id, enc.encode)
	}
	if err == nil {
		return pk, nil
	}
	if qos == 0 {
		r.sh.log.Debug("qos0 forward incomplete", "topic", pk.TopicName, "error", err)
		return pk, nil // counted by the cluster; QoS0 is at most once
	}
	if !split && errors.Is(err, cluster.ErrUnreachable) && c.Split() {
		// The split was detected while the publish waited (the window
		// of uncertainty): hold it rather than refuse it. Receivers
		// deduplicate by id whatever the first attempt delivered.
		hctx, cancel := context.WithTimeout(context.Background(), r.sh.opts.ForwardTimeout)
		err = c.ForwardHold(hctx, pk.TopicName, qos, id, enc.encode)
		cancel()
		if err == nil {
			return pk, nil
		}
	}
	code := packets.ErrImplementationSpecificError
	if errors.Is(err, cluster.ErrHoldFull) {
		// Not held for the unreachable nodes: the client may retry
		// later (MQTT 5 §3.4.2.1: quota exceeded).
		code = packets.ErrQuotaExceeded
	}
	r.sh.log.Warn("forward failed; publish refused", "client", cl.ID, "topic", pk.TopicName, "split", split, "error", err)
	return r.sh.opts.Refuse.Publish(cl, pk, code)
}

// publishEncoder is Forward's encode callback for one publish. A closure
// over OnPublish's packet, passed through the Cluster interface, moved the
// whole packet (800 bytes) to the heap for every publish, forwarded or
// not; pooled encoders keep their callback.
type publishEncoder struct {
	pk     packets.Packet
	encode func() ([]byte, error)
}

var publishEncoders = sync.Pool{New: func() any {
	e := &publishEncoder{}
	e.encode = func() ([]byte, error) { return EncodePublish(e.pk) }
	return e
}}

// forwardDeadline is a context shared by the QoS 1/2 publishes of a
// short window (forwardWindow of ForwardTimeout): a context with its own
// timer per publish cost more than the rest of a publish that matches
// no other node.
type forwardDeadline struct {
	ctx      context.Context
	deadline time.Time
	cancel   context.CancelFunc // its timer releases it at the deadline
}

// forwardWindow divides ForwardTimeout: a publish waits for peers at
// least ForwardTimeout less this fraction of it.
const forwardWindow = 50

// forwardContext returns a context that ends between ForwardTimeout
// less 1/forwardWindow of it and ForwardTimeout from now.
func (r *RoutingHook) forwardContext() context.Context {
	now := time.Now()
	timeout := r.sh.opts.ForwardTimeout
	least := timeout - timeout/forwardWindow
	if fd := r.fwdDeadline.Load(); fd != nil && fd.deadline.Sub(now) >= least {
		return fd.ctx
	}
	d := now.Add(timeout)
	ctx, cancel := context.WithDeadline(context.Background(), d)
	// Concurrent publishes may each make one; the last one stored wins
	// and the others serve only the publishes that made them.
	r.fwdDeadline.Store(&forwardDeadline{ctx: ctx, deadline: d, cancel: cancel})
	return ctx
}

// DeliverForwarded implements cluster.Broker: publish a message that
// another node forwarded to this node's subscribers, limited to the
// shared subscriptions ("$share/g/f") this node was chosen to serve.
func (r *RoutingHook) DeliverForwarded(d cluster.Delivery) error {
	if !r.sh.serving.Load() {
		return ErrNotServing
	}
	pk, err := DecodePublish(d.Msg)
	if err != nil {
		return fmt.Errorf("deliver message from %s: %w", d.From, err)
	}
	mochix.Stamp(&pk, d.From, d.ID)
	mochix.SetGroups(&pk, d.Groups) // for OnSelectSubscribers
	// Inline publishes are not tracked as inflight, but mochi validates
	// that a QoS>0 PUBLISH carries an id.
	pk.PacketID = 0
	if pk.FixedHeader.Qos > 0 {
		pk.PacketID = 1 // and a QoS0 one must not [MQTT-2.2.1-2]
	}
	inj := r.sh.injectors.Get().(*mqtt.Client)
	err = r.sh.srv.InjectPacket(inj, pk)
	r.sh.injectors.Put(inj)
	if err != nil {
		return fmt.Errorf("inject message from %s: %w", d.From, err)
	}
	if pk.FixedHeader.Retain {
		// mochi retained the injected copy; the replicated table decides
		// what this node retains, so restore its answer.
		if c := r.sh.cluster(); c != nil {
			c.ReapplyRetained(pk.TopicName)
		}
	}
	return nil
}

// OnSelectSubscribers limits an injected message's shared-subscription
// deliveries to the groups this node was chosen for; the publishing node
// picked one node per group.
func (r *RoutingHook) OnSelectSubscribers(subs *mqtt.Subscribers, pk packets.Packet) *mqtt.Subscribers {
	if !strings.HasPrefix(pk.Origin, injectorPrefix) {
		return subs
	}
	for filter := range subs.Shared {
		if !mochix.InGroups(pk, filter) {
			delete(subs.Shared, filter)
		}
	}
	return subs
}
