package dataplane

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// callResult completes a Call.
type callResult struct {
	payload []byte
	remote  string // error message from the peer's handler
	err     error  // local failure (connection lost, closed)
}

// peer is the Plane's state for one named peer: the outbound queue and
// dial loop (once SetPeer gave an address), the current outbound and
// inbound connections, calls waiting for replies, and counters.
type peer struct {
	name   string
	pl     *Plane
	q      *sendQueue // outbound frames; survives reconnects
	ctx    context.Context
	cancel context.CancelFunc
	wake   chan struct{} // capacity 1: the address changed

	mu        sync.Mutex
	addr      string
	looping   bool // dial loop started
	state     ConnState
	out, in   *conn
	pending   map[uint64]chan callResult
	removed   bool
	lastErr   string
	lastErrAt time.Time

	connected atomic.Bool
	lastRecv  atomic.Int64 // Unix ns of the last read that brought bytes

	framesSent, bytesSent, framesRecv, bytesRecv atomic.Uint64
	queueFull, dropped, dials, dialFailures      atomic.Uint64
}

func (pl *Plane) newPeer(name string) *peer {
	ctx, cancel := context.WithCancel(pl.ctx)
	return &peer{
		name:    name,
		pl:      pl,
		q:       newSendQueue(pl.cfg.QueueFrames, pl.cfg.QueueBytes),
		ctx:     ctx,
		cancel:  cancel,
		wake:    make(chan struct{}, 1),
		pending: make(map[uint64]chan callResult),
	}
}

// dialing reports whether the peer has an address (SetPeer was called).
func (p *peer) dialing() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addr != "" && !p.removed
}

// setAddr records the peer's address, starting the dial loop on first
// use and moving the outbound connection when the address changes.
func (p *peer) setAddr(addr string) {
	p.mu.Lock()
	if p.removed || p.addr == addr {
		p.mu.Unlock()
		return
	}
	p.addr = addr
	start := !p.looping
	p.looping = true
	out := p.out
	p.mu.Unlock()
	if start {
		p.pl.wg.Add(1)
		go p.dialLoop()
		return
	}
	if out != nil {
		out.close(errors.New("peer address changed"))
	}
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// dialLoop keeps an outbound connection to the peer until it is removed.
func (p *peer) dialLoop() {
	defer p.pl.wg.Done()
	cfg := &p.pl.cfg
	wait := cfg.ReconnectMin
	wasUp := true // log the first failure loudly
	for p.ctx.Err() == nil {
		p.mu.Lock()
		addr := p.addr
		p.state = Connecting
		p.mu.Unlock()
		p.dials.Add(1)
		c, err := p.pl.dial(p, addr)
		if err != nil {
			if p.ctx.Err() != nil {
				return
			}
			p.dialFailures.Add(1)
			p.lost(err)
			p.pl.linkChanged(p.name, false, err)
			if wasUp {
				p.pl.log.Warn("cannot reach peer", "peer", p.name, "addr", addr, "err", err)
				wasUp = false
			} else {
				p.pl.log.Debug("cannot reach peer", "peer", p.name, "addr", addr, "err", err, "retry_in", wait)
			}
			select {
			case <-time.After(backoff(wait)):
			case <-p.wake:
			case <-p.ctx.Done():
				return
			}
			wait = min(2*wait, cfg.ReconnectMax)
			continue
		}
		wait = cfg.ReconnectMin
		if !wasUp {
			p.pl.log.Info("peer reachable", "peer", p.name, "addr", addr)
		}
		wasUp = true
		p.mu.Lock()
		if p.removed {
			p.mu.Unlock()
			c.close(ErrClosed)
			p.pl.untrack(c.raw)
			return
		}
		p.out = c
		p.state = Connected
		p.connected.Store(true)
		p.mu.Unlock()
		p.pl.linkChanged(p.name, true, nil)
		err = c.run()
		p.mu.Lock()
		p.out = nil
		p.mu.Unlock()
		p.connected.Store(false)
		if p.ctx.Err() != nil {
			return
		}
		p.pl.linkChanged(p.name, false, err)
		p.pl.log.Warn("connection to peer lost", "peer", p.name, "addr", addr, "err", err)
		p.lost(err)
	}
}

// lost records err, drops the queued frames and fails the calls waiting
// for a reply: nothing queued for a lost connection is delivered later.
func (p *peer) lost(err error) {
	p.mu.Lock()
	p.state = Disconnected
	if err != nil {
		p.lastErr = err.Error()
		p.lastErrAt = time.Now()
	}
	pending := p.pending
	p.pending = make(map[uint64]chan callResult)
	p.mu.Unlock()
	if n := len(p.q.drain()); n > 0 {
		p.dropped.Add(uint64(n))
	}
	failErr := ErrConnLost
	if p.ctx.Err() != nil {
		failErr = ErrClosed
	}
	for _, ch := range pending {
		ch <- callResult{err: failErr}
	}
}

// shutdown stops the peer for good (RemovePeer, Close).
func (p *peer) shutdown(err error) {
	p.mu.Lock()
	p.removed = true
	out, in := p.out, p.in
	p.mu.Unlock()
	p.cancel()
	p.q.close()
	if out != nil {
		out.close(err)
	}
	if in != nil {
		in.close(err)
	}
	p.lost(nil)
	p.connected.Store(false)
}

func (p *peer) setIn(c *conn) (old *conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	old, p.in = p.in, c
	return old
}

func (p *peer) clearIn(c *conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.in == c {
		p.in = nil
	}
}

func (p *peer) addPending(id uint64, ch chan callResult) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.removed {
		return ErrClosed
	}
	p.pending[id] = ch
	return nil
}

func (p *peer) delPending(id uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.pending, id)
}

// resolve completes the call id; replies to calls that gave up are
// ignored.
func (p *peer) resolve(id uint64, r callResult) {
	p.mu.Lock()
	ch := p.pending[id]
	delete(p.pending, id)
	p.mu.Unlock()
	if ch != nil {
		ch <- r
	}
}

func (p *peer) recordErr(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lastErr = err.Error()
	p.lastErrAt = time.Now()
}

func (p *peer) stats() PeerStats {
	qf, qb := p.q.length()
	p.mu.Lock()
	s := PeerStats{
		Name:        p.name,
		Addr:        p.addr,
		State:       p.state,
		Inbound:     p.in != nil,
		LastError:   p.lastErr,
		LastErrorAt: p.lastErrAt,
	}
	p.mu.Unlock()
	s.FramesSent = p.framesSent.Load()
	s.BytesSent = p.bytesSent.Load()
	s.FramesReceived = p.framesRecv.Load()
	s.BytesReceived = p.bytesRecv.Load()
	s.QueueFrames, s.QueueBytes = qf, qb
	s.QueueFull = p.queueFull.Load()
	s.Dropped = p.dropped.Load()
	s.Dials = p.dials.Load()
	s.DialFailures = p.dialFailures.Load()
	if ns := p.lastRecv.Load(); ns != 0 {
		s.LastReceived = time.Unix(0, ns)
	}
	return s
}

// Redial makes the dial loop of a peer whose link is down try again now
// rather than after its backoff (membership saw the peer come back, so a
// healed network is used at once).
func (pl *Plane) Redial(peer string) {
	pl.mu.RLock()
	p := pl.peers[peer]
	pl.mu.RUnlock()
	if p == nil {
		return
	}
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// LastReceived returns when bytes last arrived from peer (zero if never
// or unknown).
func (pl *Plane) LastReceived(peer string) time.Time {
	pl.mu.RLock()
	p := pl.peers[peer]
	pl.mu.RUnlock()
	if p == nil {
		return time.Time{}
	}
	if ns := p.lastRecv.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// Reset closes the connections to and from peer and wakes its dial
// loop, so a change of Config.Refuse's answer for it takes effect at
// once: a refused peer loses its links now, a peer no longer refused is
// dialled now instead of after the backoff.
func (pl *Plane) Reset(peer string) {
	pl.mu.RLock()
	p := pl.peers[peer]
	pl.mu.RUnlock()
	if p == nil {
		return
	}
	p.mu.Lock()
	out, in := p.out, p.in
	p.mu.Unlock()
	err := errors.New("link reset")
	if out != nil {
		out.close(err)
	}
	if in != nil {
		in.close(err)
	}
	select {
	case p.wake <- struct{}{}:
	default:
	}
}
