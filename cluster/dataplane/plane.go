package dataplane

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Errors returned by Plane methods; match them with errors.Is.
var (
	// ErrQueueFull: the peer's send queue is at QueueFrames or
	// QueueBytes. Nothing was queued.
	ErrQueueFull = errors.New("dataplane: send queue full")
	// ErrUnknownPeer: no SetPeer for that name.
	ErrUnknownPeer = errors.New("dataplane: unknown peer")
	// ErrClosed: the Plane is closed or the peer was removed.
	ErrClosed = errors.New("dataplane: closed")
	// ErrConnLost: the connection carrying a call was lost before the
	// reply arrived; the peer may or may not have handled the call.
	ErrConnLost = errors.New("dataplane: connection lost")
	// ErrFrameTooLarge: the payload exceeds MaxFrameSize (less 8 bytes
	// for calls).
	ErrFrameTooLarge = errors.New("dataplane: payload exceeds the maximum frame size")
)

// RemoteError is the error a peer's Handler.HandleCall returned, as
// reported by Call.
type RemoteError struct {
	Peer string
	Msg  string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("dataplane: %s: remote error: %s", e.Peer, e.Msg)
}

// Handler receives what peers send. It is implemented by the consumer.
//
// HandleFrame is called for one-way frames (Send, SendWait) in the order
// the peer sent them, on one goroutine per connection; while it runs no
// further frame is read from that peer (back-pressure through TCP), so it
// should be quick. Frames of different peers are handled concurrently.
// When a peer reconnects, frames of the old and the new connection may
// briefly interleave.
//
// HandleCall is called for each Call, off the connection's reader, on
// one of at most MaxConcurrentCalls worker goroutines per connection:
// calls from one peer may run concurrently and in any order (except the
// types an InlineCaller runs on the reader). Its
// result, or its error as a RemoteError, is sent back.
//
// payload is freshly allocated for each frame and owned by the handler.
type Handler interface {
	HandleFrame(from string, typ uint8, payload []byte)
	HandleCall(from string, typ uint8, payload []byte) ([]byte, error)
}

// InlineCaller is an optional extension of Handler. Calls of the types
// for which InlineCall reports true are handled on the connection's
// reader, one at a time in arrival order, like one-way frames, instead
// of on a call worker: no goroutine hand-off per call, which is most of
// the cost of a small call. Only for calls that are quick and never wait
// for anything the same peer must send first (a reply on this connection
// is not read while the handler runs).
type InlineCaller interface {
	InlineCall(typ uint8) bool
}

// LinkObserver is an optional extension of Handler: the Plane reports
// every change of its outbound link to a peer — up once a connection is
// authenticated, down when it is lost or a dial fails (err says why) —
// in order per peer, from the peer's dial goroutine. A failing peer is
// reported down once per failed attempt until it comes up. LinkChanged
// must not block: it holds up the redial.
type LinkObserver interface {
	LinkChanged(peer string, up bool, err error)
}

// ConnState is the state of the outbound connection to a peer.
type ConnState uint8

const (
	// Disconnected: no connection; the next dial is pending (backoff).
	Disconnected ConnState = iota
	// Connecting: dialing or handshaking.
	Connecting
	// Connected: authenticated; frames are being written.
	Connected
)

// String returns "disconnected", "connecting" or "connected".
func (s ConnState) String() string {
	switch s {
	case Disconnected:
		return "disconnected"
	case Connecting:
		return "connecting"
	case Connected:
		return "connected"
	}
	return fmt.Sprintf("connstate(%d)", uint8(s))
}

// Plane is this node's end of the data plane. Create it with New, Start
// it, tell it about peers with SetPeer; it is safe for concurrent use.
type Plane struct {
	cfg Config
	h   Handler
	log *slog.Logger
	key []byte
	nw  Network

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	hsSem  chan struct{} // pending inbound handshakes
	nextID atomic.Uint64
	wg     sync.WaitGroup

	mu      sync.RWMutex
	ln      net.Listener
	peers   map[string]*peer
	conns   map[net.Conn]struct{} // every open socket, for Close
	started bool
	closed  bool

	accepted, handshakeFailures, protocolErrors, refusedConns atomic.Uint64
	lastHSLog                                                 atomic.Int64
}

// New validates cfg and returns a Plane delivering to h.
func New(cfg Config, h Handler) (*Plane, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if h == nil {
		return nil, errors.New("dataplane: nil Handler")
	}
	if cfg.Network == nil {
		cfg.Network = TCPNetwork{}
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	cfg.SecretKey = append([]byte(nil), cfg.SecretKey...)
	ctx, cancel := context.WithCancel(context.Background())
	return &Plane{
		cfg:    cfg,
		h:      h,
		log:    logger.With("node", cfg.NodeName, "component", "dataplane"),
		key:    authKey(cfg.SecretKey),
		nw:     cfg.Network,
		ctx:    ctx,
		cancel: cancel,
		hsSem:  make(chan struct{}, cfg.MaxPendingHandshakes),
		peers:  make(map[string]*peer),
		conns:  make(map[net.Conn]struct{}),
	}, nil
}

// Start listens on Config.BindAddr and accepts peers.
func (pl *Plane) Start() error {
	pl.mu.Lock()
	if pl.started || pl.closed {
		pl.mu.Unlock()
		return errors.New("dataplane: Start called twice or after Close")
	}
	pl.started = true
	pl.mu.Unlock()
	ln, err := pl.nw.Listen(pl.cfg.BindAddr)
	if err != nil {
		return fmt.Errorf("dataplane: listen on %s (cluster.data_address): %w", pl.cfg.BindAddr, err)
	}
	pl.mu.Lock()
	if pl.closed {
		pl.mu.Unlock()
		_ = ln.Close()
		return ErrClosed
	}
	pl.ln = ln
	pl.mu.Unlock()
	if len(pl.cfg.SecretKey) == 0 {
		pl.log.Warn("data plane peers are not authenticated: cluster.secret_key is empty")
	}
	pl.log.Info("data plane listening", "addr", ln.Addr().String(), "tls", pl.cfg.TLS != nil)
	pl.wg.Add(1)
	go pl.acceptLoop(ln)
	return nil
}

// Addr returns the listener's address (nil before Start).
func (pl *Plane) Addr() net.Addr {
	pl.mu.RLock()
	defer pl.mu.RUnlock()
	if pl.ln == nil {
		return nil
	}
	return pl.ln.Addr()
}

// SetPeer tells the Plane that peer name listens at addr ("host:port")
// and starts keeping a connection to it. Calling it again with a new
// address moves the connection there; with the same address it does
// nothing.
func (pl *Plane) SetPeer(name, addr string) error {
	if err := validName(name); err != nil {
		return fmt.Errorf("dataplane: peer name: %w", err)
	}
	if name == pl.cfg.NodeName {
		return fmt.Errorf("dataplane: SetPeer(%q): that is this node", name)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("dataplane: SetPeer(%q, %q): %w", name, addr, err)
	}
	pl.mu.Lock()
	if pl.closed {
		pl.mu.Unlock()
		return ErrClosed
	}
	p := pl.peers[name]
	if p == nil {
		p = pl.newPeer(name)
		pl.peers[name] = p
	}
	pl.mu.Unlock()
	p.setAddr(addr)
	return nil
}

// RemovePeer forgets a peer: its connections are closed, its queue is
// dropped and its calls fail with ErrClosed. A later inbound connection
// from it is still accepted.
func (pl *Plane) RemovePeer(name string) {
	pl.mu.Lock()
	p := pl.peers[name]
	delete(pl.peers, name)
	pl.mu.Unlock()
	if p != nil {
		p.shutdown(ErrClosed)
	}
}

// lookup returns a peer that Send may use.
func (pl *Plane) lookup(name string) (*peer, error) {
	pl.mu.RLock()
	p := pl.peers[name]
	closed := pl.closed
	pl.mu.RUnlock()
	if closed {
		return nil, ErrClosed
	}
	if p == nil || !p.dialing() {
		return nil, ErrUnknownPeer
	}
	return p, nil
}

// Send queues a one-way frame for peer without blocking. It returns
// ErrQueueFull if the peer's queue is full, ErrUnknownPeer if SetPeer was
// not called for it, ErrFrameTooLarge or ErrClosed. The Plane keeps a
// reference to payload until the frame is written: do not modify it
// after a nil return.
func (pl *Plane) Send(peer string, typ uint8, payload []byte) error {
	if len(payload) > pl.cfg.MaxFrameSize {
		return ErrFrameTooLarge
	}
	p, err := pl.lookup(peer)
	if err != nil {
		return err
	}
	if err := p.q.tryPush(frame{typ: typ, payload: payload}); err != nil {
		if err == ErrQueueFull {
			p.queueFull.Add(1)
		}
		return err
	}
	return nil
}

// SendWait is Send that waits for room in the queue until ctx is done.
func (pl *Plane) SendWait(ctx context.Context, peer string, typ uint8, payload []byte) error {
	if len(payload) > pl.cfg.MaxFrameSize {
		return ErrFrameTooLarge
	}
	p, err := pl.lookup(peer)
	if err != nil {
		return err
	}
	if err := p.q.push(ctx, p.ctx.Done(), frame{typ: typ, payload: payload}); err != nil {
		return fmt.Errorf("dataplane: send to %s: %w", peer, err)
	}
	return nil
}

// Call sends a request to peer and returns its Handler.HandleCall
// result. It waits for room in the queue and for the reply until ctx is
// done, or Config.CallTimeout if ctx has no deadline. Errors: the peer's
// handler error as *RemoteError, ErrConnLost, ErrUnknownPeer,
// ErrFrameTooLarge, ErrClosed, or the context's error.
func (pl *Plane) Call(ctx context.Context, peer string, typ uint8, payload []byte) ([]byte, error) {
	if len(payload)+idLen > pl.cfg.MaxFrameSize {
		return nil, ErrFrameTooLarge
	}
	p, err := pl.lookup(peer)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, pl.cfg.CallTimeout)
		defer cancel()
	}
	id := pl.nextID.Add(1)
	ch := resultChans.Get().(chan callResult)
	if err := p.addPending(id, ch); err != nil {
		resultChans.Put(ch)
		return nil, err
	}
	if err := p.q.push(ctx, p.ctx.Done(), frame{typ: typ, flags: flagCall, id: id, payload: payload}); err != nil {
		p.delPending(id) // ch may still be sent to: not reused
		return nil, fmt.Errorf("dataplane: call %s type %d: %w", peer, typ, err)
	}
	select {
	case r := <-ch:
		// Whoever sent r (resolve, lost) removed ch from pending
		// first, so nothing else refers to it.
		resultChans.Put(ch)
		if r.err != nil {
			return nil, fmt.Errorf("dataplane: call %s type %d: %w", peer, typ, r.err)
		}
		if r.remote != "" {
			return nil, &RemoteError{Peer: peer, Msg: r.remote}
		}
		return r.payload, nil
	case <-ctx.Done():
		p.delPending(id) // a reply may be on its way to ch: not reused
		return nil, fmt.Errorf("dataplane: call %s type %d: %w", peer, typ, ctx.Err())
	}
}

// resultChans recycles the reply channels of calls (capacity 1, empty
// when put back).
var resultChans = sync.Pool{New: func() any { return make(chan callResult, 1) }}

// linkChanged tells the handler's LinkObserver, if any.
func (pl *Plane) linkChanged(peer string, up bool, err error) {
	if o, ok := pl.h.(LinkObserver); ok {
		o.LinkChanged(peer, up, err)
	}
}

// Reachable reports whether the outbound connection to peer is up and
// authenticated.
func (pl *Plane) Reachable(peer string) bool {
	pl.mu.RLock()
	p := pl.peers[peer]
	pl.mu.RUnlock()
	return p != nil && p.connected.Load()
}

// Close stops listening, closes every connection and stops redialing.
// Queued frames are dropped and calls fail with ErrClosed. It waits for
// HandleFrame calls in progress, not for HandleCall ones.
func (pl *Plane) Close() error {
	pl.mu.Lock()
	if pl.closed {
		pl.mu.Unlock()
		return nil
	}
	pl.closed = true
	ln := pl.ln
	peers := make([]*peer, 0, len(pl.peers))
	for _, p := range pl.peers {
		peers = append(peers, p)
	}
	pl.mu.Unlock()
	pl.cancel()
	var err error
	if ln != nil {
		err = ln.Close()
	}
	for _, p := range peers {
		p.shutdown(ErrClosed)
	}
	pl.mu.Lock()
	for c := range pl.conns {
		_ = c.Close()
	}
	pl.mu.Unlock()
	pl.wg.Wait()
	return err
}

func (pl *Plane) track(c net.Conn) bool {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.closed {
		return false
	}
	pl.conns[c] = struct{}{}
	return true
}

func (pl *Plane) untrack(c net.Conn) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	delete(pl.conns, c)
}

// logHandshakeFailure logs at most one warning a second: anyone who can
// reach the port can cause handshake failures.
func (pl *Plane) logHandshakeFailure(msg string, args ...any) {
	now := time.Now().UnixNano()
	last := pl.lastHSLog.Load()
	if now-last >= int64(time.Second) && pl.lastHSLog.CompareAndSwap(last, now) {
		pl.log.Warn(msg, args...)
		return
	}
	pl.log.Debug(msg, args...)
}

func (pl *Plane) acceptLoop(ln net.Listener) {
	defer pl.wg.Done()
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if pl.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Transient (e.g. out of file descriptors): back off, bounded.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			pl.log.Error("accept failed", "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-pl.ctx.Done():
				return
			}
			continue
		}
		delay = 0
		select {
		case pl.hsSem <- struct{}{}:
		default:
			pl.refusedConns.Add(1)
			pl.logHandshakeFailure("too many pending handshakes; closing new connection", "remote", nc.RemoteAddr().String())
			_ = nc.Close()
			continue
		}
		if !pl.track(nc) {
			<-pl.hsSem
			_ = nc.Close()
			return
		}
		pl.accepted.Add(1)
		pl.wg.Add(1)
		go pl.serveInbound(nc)
	}
}

// serveInbound authenticates an accepted connection and runs it.
func (pl *Plane) serveInbound(raw net.Conn) {
	defer pl.wg.Done()
	defer pl.untrack(raw)
	defer raw.Close()
	name, nc, br, ir, err := pl.acceptHandshake(raw)
	<-pl.hsSem
	if err != nil {
		pl.handshakeFailures.Add(1)
		pl.logHandshakeFailure("inbound handshake failed", "remote", raw.RemoteAddr().String(), "err", err)
		return
	}
	pl.mu.Lock()
	if pl.closed {
		pl.mu.Unlock()
		return
	}
	p := pl.peers[name]
	if p == nil {
		p = pl.newPeer(name) // inbound only until SetPeer
		pl.peers[name] = p
	}
	pl.mu.Unlock()
	ir.recv = &p.lastRecv
	c := newConn(pl, p, raw, nc, br, false, newSendQueue(pl.cfg.QueueFrames, pl.cfg.QueueBytes))
	if old := p.setIn(c); old != nil {
		old.close(errors.New("replaced by a newer connection"))
	}
	pl.log.Debug("inbound connection up", "peer", name, "remote", raw.RemoteAddr().String())
	err = c.run()
	p.clearIn(c)
	pl.log.Debug("inbound connection down", "peer", name, "err", err)
}

func (pl *Plane) acceptHandshake(raw net.Conn) (string, net.Conn, *bufio.Reader, *idleReader, error) {
	deadline := time.Now().Add(pl.cfg.HandshakeTimeout)
	if err := raw.SetDeadline(deadline); err != nil {
		return "", nil, nil, nil, err
	}
	var nc net.Conn = raw
	if pl.cfg.TLS != nil {
		tc := tls.Server(raw, pl.cfg.TLS)
		ctx, cancel := context.WithDeadline(pl.ctx, deadline)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			return "", nil, nil, nil, fmt.Errorf("%w: TLS: %w", ErrHandshake, err)
		}
		nc = tc
	}
	ir := &idleReader{nc: nc}
	br := bufio.NewReaderSize(ir, pl.cfg.BufferSize)
	var checkDialer func(string) error
	if pl.cfg.Refuse != nil {
		checkDialer = pl.cfg.Refuse
	}
	if tc, ok := nc.(*tls.Conn); ok {
		// A client certificate must name the node the handshake claims
		// to be, as the dialer checks the server's (ServerName): a
		// certificate of the cluster's CA does not make its holder any
		// node it likes.
		refuse := pl.cfg.Refuse
		checkDialer = func(name string) error {
			if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 && certs[0].VerifyHostname(name) != nil {
				return fmt.Errorf("TLS client certificate does not name node %q", name)
			}
			if refuse != nil {
				return refuse(name)
			}
			return nil
		}
	}
	name, err := acceptHandshake(br, nc, pl.key, pl.cfg.ClusterName, pl.cfg.NodeName, checkDialer)
	if err != nil {
		return "", nil, nil, nil, err
	}
	if err := raw.SetDeadline(time.Time{}); err != nil {
		return "", nil, nil, nil, err
	}
	ir.idle = pl.cfg.IdleTimeout
	return name, nc, br, ir, nil
}

// dial connects and authenticates to p at addr.
func (pl *Plane) dial(p *peer, addr string) (*conn, error) {
	if pl.cfg.Refuse != nil {
		if err := pl.cfg.Refuse(p.name); err != nil {
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
	}
	ctx, cancel := context.WithTimeout(p.ctx, pl.cfg.DialTimeout)
	raw, err := pl.nw.Dial(ctx, addr)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	if !pl.track(raw) {
		_ = raw.Close()
		return nil, ErrClosed
	}
	fail := func(err error) (*conn, error) {
		pl.untrack(raw)
		_ = raw.Close()
		return nil, err
	}
	// Closing the socket aborts the handshake if the peer is removed.
	stop := context.AfterFunc(p.ctx, func() { _ = raw.Close() })
	defer stop()
	deadline := time.Now().Add(pl.cfg.HandshakeTimeout)
	if err := raw.SetDeadline(deadline); err != nil {
		return fail(err)
	}
	var nc net.Conn = raw
	if pl.cfg.TLS != nil {
		tcfg := pl.cfg.TLS.Clone()
		if tcfg.ServerName == "" {
			tcfg.ServerName = p.name
		}
		tc := tls.Client(raw, tcfg)
		hctx, hcancel := context.WithDeadline(p.ctx, deadline)
		err := tc.HandshakeContext(hctx)
		hcancel()
		if err != nil {
			pl.handshakeFailures.Add(1)
			return fail(fmt.Errorf("%w: TLS with %s: %w", ErrHandshake, addr, err))
		}
		nc = tc
	}
	ir := &idleReader{nc: nc}
	br := bufio.NewReaderSize(ir, pl.cfg.BufferSize)
	if err := dialHandshake(br, nc, pl.key, pl.cfg.ClusterName, pl.cfg.NodeName, p.name); err != nil {
		pl.handshakeFailures.Add(1)
		return fail(err)
	}
	if err := raw.SetDeadline(time.Time{}); err != nil {
		return fail(err)
	}
	ir.idle, ir.recv = pl.cfg.IdleTimeout, &p.lastRecv
	return newConn(pl, p, raw, nc, br, true, p.q), nil
}

// backoff returns d with ±25% jitter, so peers that lost each other at
// the same moment do not redial in lockstep.
func backoff(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	j := d / 4
	return d - j + rand.N(2*j+1)
}

// PeerStats are one peer's counters and state. Counters only grow.
type PeerStats struct {
	Name string
	Addr string // "" until SetPeer (inbound connections only)

	// State of the outbound connection; Inbound reports whether the
	// peer's connection to this node is up.
	State   ConnState
	Inbound bool

	FramesSent, BytesSent         uint64 // written, headers included
	FramesReceived, BytesReceived uint64 // read, headers included

	QueueFrames, QueueBytes int // waiting in the send queue now

	// QueueFull counts Send calls refused with ErrQueueFull; Dropped
	// counts queued frames discarded because a connection was lost or a
	// dial failed.
	QueueFull, Dropped uint64

	Dials, DialFailures uint64

	LastError   string // "" if none
	LastErrorAt time.Time

	// LastReceived is when bytes last arrived from the peer, on either
	// connection (keepalives included): its last sign of life. Zero if
	// never.
	LastReceived time.Time
}

// Stats are the Plane's counters, for metrics.
type Stats struct {
	Peers []PeerStats // sorted by name

	// Accepted counts inbound connections; HandshakeFailures handshakes
	// that failed in either direction (authentication, wrong cluster or
	// name, garbage, timeout); ProtocolErrors connections closed for
	// invalid, truncated or oversize frames; RefusedConns connections
	// closed at once because MaxPendingHandshakes were pending.
	Accepted, HandshakeFailures, ProtocolErrors, RefusedConns uint64
}

// Stats returns a snapshot of the counters.
func (pl *Plane) Stats() Stats {
	pl.mu.RLock()
	peers := make([]*peer, 0, len(pl.peers))
	for _, p := range pl.peers {
		peers = append(peers, p)
	}
	pl.mu.RUnlock()
	s := Stats{
		Accepted:          pl.accepted.Load(),
		HandshakeFailures: pl.handshakeFailures.Load(),
		ProtocolErrors:    pl.protocolErrors.Load(),
		RefusedConns:      pl.refusedConns.Load(),
	}
	for _, p := range peers {
		s.Peers = append(s.Peers, p.stats())
	}
	sort.Slice(s.Peers, func(i, j int) bool { return s.Peers[i].Name < s.Peers[j].Name })
	return s
}

// PeerStats returns the stats of one peer.
func (pl *Plane) PeerStats(name string) (PeerStats, bool) {
	pl.mu.RLock()
	p := pl.peers[name]
	pl.mu.RUnlock()
	if p == nil {
		return PeerStats{}, false
	}
	return p.stats(), true
}
