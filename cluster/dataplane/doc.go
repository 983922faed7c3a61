// Package dataplane is the node-to-node channel for routed publishes,
// replication deltas, anti-entropy and RPCs: persistent authenticated TCP
// (optionally TLS) connections carrying length-prefixed frames, batched
// into few writes, with bounded per-peer queues.
//
// # Model
//
// Peers are named. The glue tells a Plane where each peer listens
// (SetPeer, from membership metadata); the Plane then keeps one outbound
// connection to it, redialing with capped exponential backoff. A node
// sends only on connections it dialed, so two nodes hold two
// connections, one per direction, and a simultaneous connect needs no
// tie-breaking; replies to calls and keepalives travel back on the
// connection that carried the request. A newer inbound connection from a
// peer replaces an older one (the peer restarted).
//
// Send never blocks: it queues the frame or returns ErrQueueFull, and the
// caller decides (drop a QoS 0 publish and count it, retry, fail).
// SendWait blocks until the frame is queued or its context ends. Call
// sends a request and waits for the reply. Delivery is at most once: a
// connection loss, or a failed dial, drops what was queued for the peer
// (Stats Dropped) and fails calls in flight with ErrConnLost; frames
// queued while a dial is in progress go out if it succeeds.
//
// Reachable reports whether the outbound connection is up and
// authenticated. A peer that vanishes without closing (netsplit, frozen
// host) is noticed by the idle timeout: every connection sends a
// keepalive when quiet, and one that receives nothing for IdleTimeout is
// closed. The netsplit detector watches Reachable because memberlist's
// indirect probes hide a single broken link.
//
// # Handshake
//
// Every connection starts with a handshake, inside TLS when configured,
// bounded by HandshakeTimeout on both sides. Strings are a length byte
// then the bytes; K = HMAC-SHA256(secret, "mendmq dataplane auth v1").
//
//	dialer -> acceptor  hello:     "MQDP" version=1 cluster dialerName
//	                               expectedAcceptorName nonceD[32]
//	acceptor -> dialer  challenge: "MQDP" status=0 acceptorName nonceA[32]
//	                               HMAC(K, "acceptor" cluster dialer
//	                               acceptor nonceD nonceA)[32]
//	                  or rejection: "MQDP" status=1 reason
//	dialer -> acceptor  proof:     HMAC(K, "dialer" cluster dialer
//	                               acceptor nonceD nonceA)[32]
//	acceptor -> dialer  result:    status reason (status 0 = accepted)
//
// The acceptor refuses another version, another cluster or a hello for
// another node name; the dialer refuses an acceptor that answers with an
// unexpected name (a stale address) or a wrong proof. Both proofs cover
// both nonces and names, so neither can be replayed or reflected.
//
// # Frames
//
// After the handshake both directions carry frames:
//
//	+--------+--------+----------------------+----------------------+
//	| type 1 | flags 1| body length 4 (BE)   | body                 |
//	+--------+--------+----------------------+----------------------+
//
// flags: 0x01 call (body = call id uint64 BE, then the request),
// 0x02 reply (body = call id, then the response), 0x04 error (with
// reply: the response is an error message), 0x08 control (type is a
// control code: 1 = keepalive, empty body). Other bits and combinations
// are invalid. A frame with no call/reply/control flag is a one-way
// frame for Handler.HandleFrame; type is the application's. The body
// length is at most MaxFrameSize. A peer that sends invalid flags, an
// oversize or truncated frame, or a frame that does not belong on that
// connection (calls and one-way frames flow dialer to acceptor, replies
// acceptor to dialer) is disconnected and counted in
// Stats.ProtocolErrors; the node carries on.
package dataplane
