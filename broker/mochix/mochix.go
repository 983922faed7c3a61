// Package mochix is the one place where mendmq reaches into the mochi MQTT
// server (v2.7.9) past its hook API: the fields of a packet it borrows as
// a side channel, a client's message queue (mochi calls it inflight) and
// the server counters that go with it, the client and topic indexes, the
// packet type that makes mochi skip a write, and three unexported fields
// reached by their offsets (a client's write buffer and packet id
// counter, the server's table of delayed wills).
//
// Everything here relies on how that mochi version behaves, not on a
// documented contract. mochix_test.go pins each behaviour against the
// mochi version in go.mod: after a mochi upgrade, a failure there names
// the workaround to revisit before anything else breaks in a subtler way.
//
// Functions are safe for concurrent use to the extent mochi's own
// structures are (its queue and indexes lock themselves).
package mochix

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"unsafe"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Side channel: a publish's identity.
//
// A publish's origin node, its id there and its topic ride in the packet
// itself to every delivery mochi makes of it, the copy it queues for a
// client included, in fields of the packet's CONNECT parameters, which a
// PUBLISH does not use and Packet.Copy carries into every delivery: the
// origin in the client identifier, the id in the will properties' session
// expiry interval (high 32 bits) and maximum packet size (low 32 bits),
// the topic in the will topic (a delivery may carry a topic alias instead
// of its topic). The encoders of PUBLISH ignore those fields, so nothing
// of it reaches the wire.

// Stamp records in pk the origin node of the publish, its id there and its
// topic. Stamp the packet before mochi makes its deliveries (OnPublish, or
// the packet given to InjectPacket): noting the id anywhere else races with
// the deliveries that follow on the same goroutine.
func Stamp(pk *packets.Packet, origin string, id uint64) {
	pk.Connect.ClientIdentifier = origin
	pk.Connect.WillProperties.SessionExpiryInterval = uint32(id >> 32)
	pk.Connect.WillProperties.MaximumPacketSize = uint32(id)
	pk.Connect.WillTopic = pk.TopicName
}

// StampOf returns what Stamp recorded in pk, or a delivery of it; ok is
// false for a publish without a stamp (a will, a message restored from
// storage, a $SYS publish).
func StampOf(pk packets.Packet) (origin string, id uint64, topic string, ok bool) {
	id = uint64(pk.Connect.WillProperties.SessionExpiryInterval)<<32 | uint64(pk.Connect.WillProperties.MaximumPacketSize)
	if id == 0 || pk.Connect.ClientIdentifier == "" {
		return "", 0, "", false
	}
	return pk.Connect.ClientIdentifier, id, pk.Connect.WillTopic, true
}

// Side channel: the shared groups a forwarded publish may serve. They ride
// in the packet's filter list, which a PUBLISH does not use and mochi hands
// unchanged to OnSelectSubscribers.

// SetGroups records in pk the shared subscriptions ("$share/g/f") this
// node serves for it.
func SetGroups(pk *packets.Packet, groups []string) {
	pk.Filters = nil
	for _, g := range groups {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: g})
	}
}

// InGroups reports whether SetGroups recorded filter in pk.
func InGroups(pk packets.Packet, filter string) bool {
	return slices.ContainsFunc(pk.Filters, func(g packets.Subscription) bool { return g.Filter == filter })
}

// Withholding a write.
//
// WritePacket encodes by packet type and fails on any other, writing
// nothing; OnPacketEncode runs before that switch. A hook can therefore
// keep a packet from being written by giving it the Reserved type. The
// write fails with an error, so only withhold a packet whose write error
// is ignored: a PUBLISH from a client's write loop, or one written by this
// program. Do not withhold a CONNACK, SUBACK, UNSUBACK or a resend at
// connect (mochi ends the connection or the resend on that error).
//
// A withheld write also skips mochi's flush. While a client's write loop
// has more packets queued, mochi appends each write (the write loop's, and
// those of other goroutines: CONNACK, acks, PINGRESP) to a buffer that the
// write made with an empty queue flushes. If that last write is withheld,
// what the buffer holds waits for the client's next write, possibly for
// good (a CONNACK, seen in broker/quirks' tests). So Withhold flushes the
// buffer itself, as mochi would have (flushOutbuf, under the client's
// write lock), through the buffer's field offset (outbufOffset).

// Withhold makes mochi skip writing pk to cl (call it in OnPacketEncode)
// and writes out the packets mochi buffered for cl before it, which the
// skipped write would strand (see Buffered writes). A flush that fails
// is the connection's failure, which its reader sees too.
func Withhold(cl *mqtt.Client, pk *packets.Packet) {
	pk.FixedHeader.Type = packets.Reserved
	_ = FlushWrites(cl)
}

// Buffered writes.
//
// WritePacket buffers a packet (in the client connection's unexported
// outbuf) while more packets wait in the client's outbound queue, and
// writes the buffer out with the last one. A withheld packet fails before
// that flush: when it is the last of a burst, the packets buffered before
// it stay in the buffer until the client's next write — a PINGRESP, up to
// a keep-alive later, or never for a client that only listens. FlushWrites
// writes the buffer out as mochi's own flush does (under the client's
// lock, the buffer dropped once written).

// outbufOffset is the offset of ClientConnection.outbuf (*bytes.Buffer),
// 0 if this mochi has no such field (FlushWrites then fails).
var outbufOffset = func() uintptr {
	f, ok := reflect.TypeFor[mqtt.ClientConnection]().FieldByName("outbuf")
	if !ok || f.Type != reflect.TypeFor[*bytes.Buffer]() {
		return 0
	}
	return f.Offset
}()

// ErrNoOutbuf: this mochi version has no write buffer where FlushWrites
// looks for it (see Buffered writes).
var ErrNoOutbuf = errors.New("mochix: mochi's client write buffer not found")

// FlushWrites writes out what mochi buffered for cl.
func FlushWrites(cl *mqtt.Client) error {
	if outbufOffset == 0 {
		return ErrNoOutbuf
	}
	cl.Lock()
	defer cl.Unlock()
	buf := (**bytes.Buffer)(unsafe.Add(unsafe.Pointer(&cl.Net), outbufOffset))
	if *buf == nil || cl.Net.Conn == nil {
		return nil
	}
	if _, err := (*buf).WriteTo(cl.Net.Conn); err != nil {
		return fmt.Errorf("flush writes to client %s: %w", cl.ID, err)
	}
	*buf = nil
	return nil
}

// Client queues.

var (
	// ErrTakenOver: Enqueue found the client taken over by a reconnect
	// (mochi cloned its queue for the new connection already) and took
	// the message out again; it belongs to the session's new client.
	ErrTakenOver = errors.New("mochix: client taken over")
	// ErrCleared: Enqueue found the client taken over, and mochi's
	// takeover cleared its queue with the message in it, reporting it
	// with OnQosDropped.
	ErrCleared = errors.New("mochix: client taken over, message cleared by mochi")
	// ErrNoPacketID: every packet id of the client is in use.
	ErrNoPacketID = errors.New("mochix: packet ids exhausted")
)

// Queued returns the client's queue: outbound QoS 1/2 messages not yet
// acknowledged and the PUBREC/PUBREL state of QoS 2 exchanges.
func Queued(cl *mqtt.Client) []packets.Packet { return cl.State.Inflight.GetAll(false) }

// QueuedAt returns the entry of cl's queue under packet id id.
func QueuedAt(cl *mqtt.Client, id uint16) (packets.Packet, bool) { return cl.State.Inflight.Get(id) }

// QueueLen is len(Queued(cl)).
func QueueLen(cl *mqtt.Client) int { return cl.State.Inflight.Len() }

// Dequeue takes the message with packet id out of cl's queue, keeping the
// server's inflight count right. It reports whether it was there: of two
// callers racing for one message, exactly one gets true.
func Dequeue(srv *mqtt.Server, cl *mqtt.Client, id uint16) bool {
	if !cl.State.Inflight.Delete(id) {
		return false
	}
	atomic.AddInt64(&srv.Info.Inflight, -1)
	return true
}

// Enqueue puts pk into cl's queue as mochi queues a delivery: under a
// free packet id of cl (returned in the packet), counted in the server's
// inflight count. It does not write it; the caller stores and writes it.
//
// A client taken over by a reconnect hands its queue to the new
// connection (mochi clones it, then clears the old queue) before the new
// client is listed: a message put into the old client after the clone
// would be lost. Enqueue checks for that after queuing and returns
// ErrTakenOver (the message is not in cl's queue) or ErrCleared (mochi's
// clear took it and reported it with OnQosDropped).
func Enqueue(srv *mqtt.Server, cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	id, err := cl.NextPacketID()
	if err != nil {
		return pk, ErrNoPacketID
	}
	pk.PacketID = uint16(id)
	if cl.State.Inflight.Set(pk) {
		atomic.AddInt64(&srv.Info.Inflight, 1)
	}
	if cl.IsTakenOver() {
		if Dequeue(srv, cl, pk.PacketID) {
			return pk, ErrTakenOver
		}
		return pk, ErrCleared
	}
	return pk, nil
}

// Requeue puts pk back into cl's queue under its own packet id, counted
// in the server's inflight count, if that id is free; it reports whether
// it did.
func Requeue(srv *mqtt.Server, cl *mqtt.Client, pk packets.Packet) bool {
	if _, taken := cl.State.Inflight.Get(pk.PacketID); taken {
		return false
	}
	if cl.State.Inflight.Set(pk) {
		atomic.AddInt64(&srv.Info.Inflight, 1)
	}
	return true
}

// packetIDOffset is the offset of Client.State.packetID (a uint32, the
// last packet id NextPacketID handed out) in mochi's Client, 0 if there is
// no such field.
var packetIDOffset = func() uintptr {
	sf, ok := reflect.TypeFor[mqtt.Client]().FieldByName("State")
	if !ok {
		return 0
	}
	pf, ok := sf.Type.FieldByName("packetID")
	if !ok || pf.Type.Kind() != reflect.Uint32 {
		return 0
	}
	return sf.Offset + pf.Offset
}()

// SkipPacketIDs moves cl's packet id counter (the last id mochi's
// NextPacketID handed out; it hands out the next free one after it) to
// move(last), atomically with respect to NextPacketID. A client that took
// a session over starts from 0, and would soon reuse the ids of messages
// taken out of its queue for a while (broker/quirks.SendQuota). It
// reports whether mochi's Client has the counter.
func SkipPacketIDs(cl *mqtt.Client, move func(last uint16) uint16) bool {
	if packetIDOffset == 0 {
		return false
	}
	cl.Lock() // NextPacketID's lock
	defer cl.Unlock()
	p := (*uint32)(unsafe.Add(unsafe.Pointer(cl), packetIDOffset))
	atomic.StoreUint32(p, uint32(move(uint16(atomic.LoadUint32(p)))))
	return true
}

// Restore puts pk into cl's queue under its own packet id, as mochi
// restores a stored session (not counted in the server's inflight count,
// as mochi does not count those). For a client that is not listed yet.
func Restore(cl *mqtt.Client, pk packets.Packet) { cl.State.Inflight.Set(pk) }

// ClearQueue empties cl's queue as mochi does when a session ends (each
// message reported with OnQosDropped) and returns the packet ids it held.
func ClearQueue(cl *mqtt.Client) []uint16 {
	var ids []uint16
	for _, pk := range cl.State.Inflight.GetAll(false) {
		ids = append(ids, pk.PacketID)
	}
	cl.ClearInflights()
	return ids
}

// DisableSendQuota stops mochi's flow control of QoS 1/2 deliveries to cl
// (MQTT 5 Receive Maximum), which can deadlock (pinned in
// TestSendQuotaDeadlocks); broker/quirks.SendQuota enforces Receive
// Maximum instead. mochi sets the quota when it parses the CONNECT and
// again when a takeover clones the session's queue.
func DisableSendQuota(cl *mqtt.Client) { cl.State.Inflight.ResetSendQuota(0) }

// Sessions and the client index.

// Client returns the client listed under id: the connected client, or a
// disconnected persistent session.
func Client(srv *mqtt.Server, id string) (*mqtt.Client, bool) { return srv.Clients.Get(id) }

// Clients returns every listed client by id.
func Clients(srv *mqtt.Server) map[string]*mqtt.Client { return srv.Clients.GetAll() }

// Unlist removes cl from the client index if it is the client listed
// under its id.
func Unlist(srv *mqtt.Server, cl *mqtt.Client) {
	if cur, ok := srv.Clients.Get(cl.ID); ok && cur == cl {
		srv.Clients.Delete(cl.ID)
	}
}

// DisconnectListener disconnects every connected client of listener id
// (v5: DISCONNECT 0x8B server shutting down), as mochi's shutdown does
// (closeListenerClients), without mochi's Clients.GetByListener: that one
// read-locks the client index twice (it calls Len under its own read
// lock), so a client being removed at that moment (Clients.Delete waiting
// for the write lock between the two) hangs the shutdown for good (seen
// in broker/clustertests: TestDataPlaneTLS stopped for 10 minutes). Give
// it to the listener as its close function.
func DisconnectListener(srv *mqtt.Server, id string) {
	for _, cl := range srv.Clients.GetAll() {
		if cl.Net.Listener == id && !cl.Closed() {
			_ = srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}

// Detached lists a new disconnected session of id, the way mochi lists a
// session restored from storage, so that mochi's takeover at the next
// CONNECT of id (clean start false) hands it to that connection: its
// queue (Restore) and subscriptions (Subscribe), session present. set
// fills the session's properties before it is listed.
func Detached(srv *mqtt.Server, id string, set func(*mqtt.Client)) *mqtt.Client {
	cl := srv.NewClient(nil, "cluster", id, false)
	cl.Stop(packets.ErrSessionTakenOver)
	if set != nil {
		set(cl)
	}
	srv.Clients.Add(cl)
	return cl
}

// Inline returns a new inline client named id: what it publishes through
// InjectPacket reaches local subscribers (QoS 1/2 delivered as such) with
// no acknowledgement to it, skipping ACL and topic validity checks.
// Hooks see it with cl.Net.Inline set.
func Inline(srv *mqtt.Server, id string) *mqtt.Client {
	cl := srv.NewClient(nil, "cluster", id, true)
	cl.Properties.ProtocolVersion = 5
	return cl
}

// Subscribe subscribes cl to sub in the topic index and its session.
func Subscribe(srv *mqtt.Server, cl *mqtt.Client, sub packets.Subscription) {
	srv.Topics.Subscribe(cl.ID, sub)
	cl.State.Subscriptions.Add(sub.Filter, sub)
}

// Subscriptions returns cl's subscriptions, sorted by filter.
func Subscriptions(cl *mqtt.Client) []packets.Subscription {
	all := cl.State.Subscriptions.GetAll()
	out := make([]packets.Subscription, 0, len(all))
	for _, sub := range all {
		out = append(out, sub)
	}
	slices.SortFunc(out, func(a, b packets.Subscription) int { return strings.Compare(a.Filter, b.Filter) })
	return out
}

// Unsubscribe drops every subscription of cl from the topic index and
// its session, keeping the server's subscription count right, and
// returns their filters. Unlike mochi's UnsubscribeClient it also works
// for a client taken over and calls no hook.
func Unsubscribe(srv *mqtt.Server, cl *mqtt.Client) []string {
	var filters []string
	for filter := range cl.State.Subscriptions.GetAll() {
		if srv.Topics.Unsubscribe(filter, cl.ID) {
			atomic.AddInt64(&srv.Info.Subscriptions, -1)
		}
		cl.State.Subscriptions.Delete(filter)
		filters = append(filters, filter)
	}
	slices.Sort(filters)
	return filters
}

// Ephemeral reports whether cl's session ends with its connection (v5:
// session expiry 0; v3: clean session).
func Ephemeral(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval == 0
	}
	return cl.Properties.Clean
}

// ClearWillDelay makes cl's will due at once: mochi reads a will's delay
// from the client when it publishes the will, not from the will OnWill
// returns. Call it in OnWill.
func ClearWillDelay(cl *mqtt.Client) { cl.Properties.Will.WillDelayInterval = 0 }

// DropWill makes mochi publish no will when cl's connection ends: its
// sendLWT returns at once while the will flag is clear. For a client
// still connected whose session continues elsewhere (a takeover with the
// session kept and a Will Delay Interval: the will is not sent
// [MQTT-3.1.4-3]).
func DropWill(cl *mqtt.Client) { atomic.StoreUint32(&cl.Properties.Will.Flag, 0) }

// willsOffsets locate mochi's table of delayed wills: the offset of
// Server.loop (a pointer, set by mqtt.New) and of loop.willDelayed (a
// *packets.Packets, also set by mqtt.New) in the loop; ok is false if
// mochi's Server has no such fields.
var loopOffset, willsOffset, willsOK = func() (uintptr, uintptr, bool) {
	lf, ok := reflect.TypeFor[mqtt.Server]().FieldByName("loop")
	if !ok || lf.Type.Kind() != reflect.Pointer {
		return 0, 0, false
	}
	wf, ok := lf.Type.Elem().FieldByName("willDelayed")
	if !ok || wf.Type != reflect.TypeFor[*packets.Packets]() {
		return 0, 0, false
	}
	return lf.Offset, wf.Offset, true
}()

// CancelDelayedWill drops the delayed will of client id that mochi holds
// (a client that lost its connection with a Will Delay Interval, its
// session kept): mochi drops it when the client connects here again, not
// when it connects on another node. It reports whether there was one.
func CancelDelayedWill(srv *mqtt.Server, id string) bool {
	if !willsOK {
		return false
	}
	loop := *(*unsafe.Pointer)(unsafe.Add(unsafe.Pointer(srv), loopOffset))
	if loop == nil {
		return false
	}
	wills := *(**packets.Packets)(unsafe.Add(loop, willsOffset))
	if wills == nil {
		return false
	}
	_, ok := wills.Get(id)
	wills.Delete(id)
	return ok
}

// Retained messages.

// SetRetained makes pk the retained message of its topic (an empty
// payload deletes it) without any hook, keeping the server's count right.
func SetRetained(srv *mqtt.Server, pk packets.Packet) {
	srv.Topics.RetainMessage(pk)
	atomic.StoreInt64(&srv.Info.Retained, int64(srv.Topics.Retained.Len()))
}

// Retained returns the local retained message of topic.
func Retained(srv *mqtt.Server, topic string) (packets.Packet, bool) {
	return srv.Topics.Retained.Get(topic)
}

// RetainedTopics returns the topics with a local retained message.
func RetainedTopics(srv *mqtt.Server) []string {
	var out []string
	for topic := range srv.Topics.Retained.GetAll() {
		out = append(out, topic)
	}
	slices.Sort(out)
	return out
}

// MaxMessageExpiry is the server's cap on message expiry intervals in
// seconds (0: none).
func MaxMessageExpiry(srv *mqtt.Server) int64 {
	return srv.Options.Capabilities.MaximumMessageExpiryInterval
}
