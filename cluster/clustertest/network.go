// Package clustertest is an in-process fault-injecting network for
// multi-node cluster tests.
//
// One Network connects any number of named nodes that all live on
// 127.0.0.1. For every node it hands out
//
//   - a memberlist transport (Network.Transport): memberlist's own
//     NetTransport (real UDP packets and TCP streams on 127.0.0.1) wrapped
//     so that traffic across a cut link is dropped, and
//   - a data-plane network (Network.DataNetwork): Listen/Dial on real TCP
//     whose dials across a cut fail and whose open connections are closed
//     when their link is cut.
//
// Links are named by node: Cut(a, b) drops everything
// between a and b in both directions and nothing else, so an indirect
// memberlist probe from a through c to b still succeeds — exactly the
// "single broken link" case the netsplit detector must see through the
// data plane. Isolate, Partition and Heal are shorthands over the same
// link table.
//
// Every node enforces the cut on what it sends (packets, dials) and the
// Network closes the streams it saw dialed across a newly cut link, so a
// cut is observed by both layers without any cooperation from the code
// under test. Addresses are owned by the node that bound them; traffic to
// an address no node owns passes untouched.
//
// By default a cut closes the streams across it at once, so the peer reads
// EOF: the fastest a node can learn about a cut. The accepting end of a
// data-plane stream reads EOF at once, even with bytes still buffered:
// what was sent but not read before the cut is lost with it. Config.Silent models the
// common real failure instead (a dead switch, a firewall that drops):
// streams across a cut stay open, what is written on them is lost and
// neither end learns anything until its own timeouts fire.
//
// CutAfter arms a cut that runs once a node has received a number of bytes
// over streams, so a test can cut links in the middle of a large transfer
// (a joiner's table sync, an anti-entropy repair) rather than at a time.
//
// Optional random faults (packet drop and delay for memberlist's UDP
// traffic) come from one RNG seeded by Config.Seed; the seed is logged
// through the test so a failing run can be replayed.
package clustertest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ErrLinkCut is returned by dials (memberlist streams and data-plane
// connections) across a cut link.
var ErrLinkCut = errors.New("clustertest: link is cut")

// Config holds the optional random faults of a Network.
type Config struct {
	// Seed seeds the fault RNG. 0 picks a seed from the clock; either way
	// the seed is logged with tb.Logf and available from Network.Seed.
	Seed uint64

	// DropRate is the probability in [0, 1) that a memberlist packet (UDP)
	// on an intact link is dropped. Default 0. Streams are never dropped
	// randomly: TCP is reliable, and losing bytes mid-stream would model a
	// broken kernel, not a lossy network.
	DropRate float64

	// MaxDelay delays every memberlist packet by a uniformly random
	// duration in [0, MaxDelay], which also reorders packets. Default 0.
	MaxDelay time.Duration

	// Silent makes cuts silent for open streams: they are not closed;
	// bytes written across a cut link are discarded, nothing arrives, and
	// a close (FIN) is not seen either, so each end notices only through
	// its own timeouts (read deadlines, keepalives), as on a real network
	// that drops packets. Dials across a cut still fail at once. A stream
	// that lost bytes is closed by Heal: TCP would retransmit them, this
	// network cannot, and a stream with a gap would be corrupt. Default
	// false: a cut closes its streams at once and the peer reads EOF.
	Silent bool
}

// Network is a set of nodes on 127.0.0.1 whose links can be cut and
// healed. All methods are safe for concurrent use.
type Network struct {
	tb   testing.TB
	seed uint64

	mu       sync.Mutex
	rng      *rand.Rand
	dropRate float64
	maxDelay time.Duration
	silent   bool                  // Config.Silent; fixed at New
	owner    map[string]string     // address -> node that bound it
	cut      map[[2]string]bool    // sorted node pair -> cut
	oneway   map[[2]string]bool    // (from, to) -> packets from->to dropped
	isolated map[string]bool       // node -> cut from every other node
	conns    map[*trackedConn]bool // open streams dialed through the Network
	nextID   uint64                // trackedConn ids, for a stable close order
	// accepted holds the accepting ends of data-plane streams, by the
	// dialer's address: a cut ends them with the dialing end, so what
	// was sent but not yet read is lost, as on a real network.
	accepted map[string]*acceptedConn

	trip atomic.Pointer[tripwire] // CutAfter's armed tripwire, nil if none
}

// tripwire is an armed CutAfter. Every read or write toward its node
// reserves its share of the bytes left before it starts (a blocked read
// holds its reservation), so streams running at once never carry more
// than the mark between them.
type tripwire struct {
	node  string
	cut   func()
	mu    sync.Mutex
	cond  *sync.Cond
	left  int64 // not reserved
	used  int64 // carried
	total int64
	// cutting: the mark is reached and the cut runs; operations wait
	// for it, so nothing slips through before the links are cut.
	cutting bool
	fired   bool // the cut ran: no limit any more
}

// reserveMax caps one reservation: a stream idle in a read holds at most
// this much of the budget.
const reserveMax = 16 << 10

// reserve returns how many bytes (up to want) may flow now, waiting while
// every byte left is reserved by operations under way; -1 once the wire
// has fired (no limit).
func (w *tripwire) reserve(want int) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	for !w.fired && (w.cutting || w.left == 0) {
		w.cond.Wait()
	}
	if w.fired {
		return -1
	}
	r := min(int64(want), w.left, reserveMax)
	w.left -= r
	return int(r)
}

// settle accounts k of r reserved bytes as carried and returns the rest;
// it reports whether they reach the mark (the caller runs the cut).
func (w *tripwire) settle(r, k int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.left += int64(r - max(k, 0))
	w.used += int64(max(k, 0))
	w.cond.Broadcast()
	if w.fired || w.cutting || w.used < w.total {
		return false
	}
	w.cutting = true
	return true
}

// done releases the operations waiting for the cut.
func (w *tripwire) done() {
	w.mu.Lock()
	w.fired = true
	w.cond.Broadcast()
	w.mu.Unlock()
}

// New returns a Network with the given faults. The seed is logged through
// tb; connections still open when the test ends are closed by tb.Cleanup.
func New(tb testing.TB, cfg Config) *Network {
	tb.Helper()
	seed := cfg.Seed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	tb.Logf("clustertest: seed %d (replay with clustertest.Config{Seed: %d})", seed, seed)
	n := &Network{
		tb:       tb,
		seed:     seed,
		rng:      rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		dropRate: cfg.DropRate,
		maxDelay: cfg.MaxDelay,
		silent:   cfg.Silent,
		owner:    make(map[string]string),
		cut:      make(map[[2]string]bool),
		oneway:   make(map[[2]string]bool),
		isolated: make(map[string]bool),
		conns:    make(map[*trackedConn]bool),
		accepted: make(map[string]*acceptedConn),
	}
	tb.Cleanup(n.closeAll)
	return n
}

// Seed returns the seed of the fault RNG.
func (n *Network) Seed() uint64 { return n.seed }

// SetFaults changes the random packet faults at run time (see Config).
func (n *Network) SetFaults(dropRate float64, maxDelay time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.dropRate, n.maxDelay = dropRate, maxDelay
}

// Cut breaks the link between nodes a and b in both directions: packets
// are dropped, new dials fail with ErrLinkCut and open streams between
// them are closed. Links to other nodes are untouched.
func (n *Network) Cut(a, b string) {
	n.mu.Lock()
	n.cut[pair(a, b)] = true
	victims := n.blockedConnsLocked()
	n.mu.Unlock()
	n.tb.Logf("clustertest: cut %s <-> %s", a, b)
	closeConns(victims)
}

// CutOneWay drops the packets (memberlist's UDP) from node `from` to node
// `to` and nothing the other way: an asymmetric failure. Streams need
// both directions, so TCP between the two fails either way (dials fail,
// open streams are closed), as it would on a real network.
func (n *Network) CutOneWay(from, to string) {
	n.mu.Lock()
	n.oneway[[2]string{from, to}] = true
	victims := n.blockedConnsLocked()
	n.mu.Unlock()
	n.tb.Logf("clustertest: cut %s -> %s (one way)", from, to)
	closeConns(victims)
}

// Isolate cuts node a from every other node, including nodes added later.
func (n *Network) Isolate(a string) {
	n.mu.Lock()
	n.isolated[a] = true
	victims := n.blockedConnsLocked()
	n.mu.Unlock()
	n.tb.Logf("clustertest: isolate %s", a)
	closeConns(victims)
}

// Partition cuts every link between nodes of different sides; links
// within a side and links of nodes not named are untouched. Partition
// adds to existing cuts; call Heal first for a fresh split.
func (n *Network) Partition(sides ...[]string) {
	n.mu.Lock()
	for i, side := range sides {
		for _, other := range sides[i+1:] {
			for _, a := range side {
				for _, b := range other {
					n.cut[pair(a, b)] = true
				}
			}
		}
	}
	victims := n.blockedConnsLocked()
	n.mu.Unlock()
	n.tb.Logf("clustertest: partition %v", sides)
	closeConns(victims)
}

// Heal restores every link (cuts and isolations). Closed streams stay
// closed; the code under test has to reconnect. With Config.Silent, the
// streams that lost bytes or were closed by one end during the cut are
// closed now (see Config.Silent).
func (n *Network) Heal() {
	n.mu.Lock()
	clear(n.cut)
	clear(n.oneway)
	clear(n.isolated)
	var victims []*trackedConn
	for c := range n.conns {
		if c.lost || c.closing {
			victims = append(victims, c)
			delete(n.conns, c)
		}
	}
	sort.Slice(victims, func(i, j int) bool { return victims[i].id < victims[j].id })
	n.mu.Unlock()
	n.tb.Logf("clustertest: heal")
	closeConns(victims)
}

// CutAfter arranges for cut to run once node `to` has received `bytes`
// more bytes over the Network's streams (data-plane connections and
// memberlist's TCP streams, whichever end dialed), so that a test can cut
// links in the middle of a large transfer to that node: a joiner's table
// sync, an anti-entropy repair. Streams toward the node together carry
// exactly that many bytes (a read or write that would cross the mark is
// cut short at it); cut (typically Cut, Isolate or Partition) runs right
// after the one that reaches it, on that goroutine. A later call replaces
// an armed one; bytes <= 0 disarms.
func (n *Network) CutAfter(to string, bytes int64, cut func()) {
	if old := n.trip.Swap(nil); old != nil {
		old.done() // release its waiters
	}
	if bytes <= 0 {
		return
	}
	w := &tripwire{node: to, cut: cut, left: bytes, total: bytes}
	w.cond = sync.NewCond(&w.mu)
	n.trip.Store(w)
	n.tb.Logf("clustertest: cut armed after %d bytes to %s", bytes, to)
}

// reserve returns the armed tripwire of node, if any, and how many of
// want bytes may flow toward node now (want without a tripwire).
func (n *Network) reserve(node string, want int) (*tripwire, int) {
	w := n.trip.Load()
	if w == nil || w.node != node || want == 0 {
		return nil, want
	}
	r := w.reserve(want)
	if r < 0 {
		return nil, want
	}
	return w, r
}

// settle accounts k of the r bytes reserved on w; when they reach the
// mark it disarms w and runs its cut, and reports true.
func (n *Network) settle(w *tripwire, r, k int) bool {
	if w == nil || !w.settle(r, k) {
		return false
	}
	n.tb.Logf("clustertest: %s received the armed number of bytes", w.node)
	w.cut()
	w.done()
	// Disarmed only now: until the cut ran, new operations toward the
	// node wait on w (cutting) instead of passing unlimited.
	n.trip.CompareAndSwap(w, nil)
	return true
}

// Linked reports whether streams currently flow between a and b.
func (n *Network) Linked(a, b string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return !n.blockedLocked(a, b)
}

// Owner returns the node that bound addr ("" if none).
func (n *Network) Owner(addr string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.owner[addr]
}

func pair(a, b string) [2]string {
	if b < a {
		a, b = b, a
	}
	return [2]string{a, b}
}

// blockedLocked reports whether streams between a and b are cut.
func (n *Network) blockedLocked(a, b string) bool {
	if a == b {
		return false
	}
	return n.cut[pair(a, b)] || n.isolated[a] || n.isolated[b] || n.oneway[[2]string{a, b}] || n.oneway[[2]string{b, a}]
}

// packetBlockedLocked reports whether packets from a to b are dropped.
func (n *Network) packetBlockedLocked(from, to string) bool {
	if from == to {
		return false
	}
	return n.cut[pair(from, to)] || n.isolated[from] || n.isolated[to] || n.oneway[[2]string{from, to}]
}

// route decides the fate of traffic from node `from` to address `to`:
// blocked reports a cut link; peer is the owning node ("" if unknown).
func (n *Network) route(from, to string) (peer string, blocked bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	peer = n.owner[to]
	if peer == "" {
		return "", false
	}
	return peer, n.blockedLocked(from, peer)
}

// packetRoute is route for a packet: only the from->to direction counts.
func (n *Network) packetRoute(from, to string) (peer string, blocked bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	peer = n.owner[to]
	if peer == "" {
		return "", false
	}
	return peer, n.packetBlockedLocked(from, peer)
}

// packetFate draws the random fate of one packet on an intact link.
func (n *Network) packetFate() (drop bool, delay time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.dropRate > 0 && n.rng.Float64() < n.dropRate {
		return true, 0
	}
	if n.maxDelay > 0 {
		delay = time.Duration(n.rng.Int64N(int64(n.maxDelay) + 1))
	}
	return false, delay
}

func (n *Network) register(node, addr string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.owner[addr] = node
}

func (n *Network) unregister(addr string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.owner, addr)
}

// blockedConnsLocked removes and returns the streams a cut closes: the
// open streams across a cut link, none with Config.Silent.
func (n *Network) blockedConnsLocked() []*trackedConn {
	if n.silent {
		return nil
	}
	var out []*trackedConn
	for c := range n.conns {
		if n.blockedLocked(c.from, c.to) {
			out = append(out, c)
			delete(n.conns, c)
		}
	}
	// Close in a stable order so runs with the same seed behave alike.
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

func (n *Network) closeAll() {
	n.mu.Lock()
	var all []*trackedConn
	for c := range n.conns {
		all = append(all, c)
	}
	clear(n.conns)
	n.mu.Unlock()
	closeConns(all)
}

func closeConns(cs []*trackedConn) {
	for _, c := range cs {
		c.markDone()
		if a := c.net.acceptedEnd(c); a != nil {
			a.cut.Store(true)
		}
		_ = c.Conn.Close()
	}
}

// acceptedEnd returns the accepting end of c, if a DataNetwork listener
// accepted it.
func (n *Network) acceptedEnd(c *trackedConn) *acceptedConn {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.accepted[c.Conn.LocalAddr().String()]
}

// silentDrop reports whether traffic on c is lost because the Network is
// silent and c's link is cut; if so and lost is set, c is marked as a
// stream with a gap, which Heal closes. The check and the mark happen
// under the Network's lock, so a Heal either sees the mark or comes
// before the check (and the traffic passes).
func (n *Network) silentDrop(c *trackedConn, lost bool) bool {
	if !n.silent {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.blockedLocked(c.from, c.to) {
		return false
	}
	if lost {
		c.lost = true
	}
	return true
}

// trackedConn is a stream dialed through the Network; it is closed when
// its link is cut (with Config.Silent it stalls instead, see Read, Write
// and Close). Only the dialing end is wrapped: a silent cut is enforced
// on what this end writes, reads and closes, which covers both
// directions of the stream.
type trackedConn struct {
	net.Conn
	net      *Network
	id       uint64
	from, to string

	// Config.Silent only, guarded by net.mu:
	lost    bool // bytes (or the peer's close) were discarded across a cut
	closing bool // closed by this end during a cut; the socket is closed at Heal

	readDeadline atomic.Int64  // this end's read deadline, UnixNano; 0 none
	selfClosed   atomic.Bool   // Close was called on this end
	done         chan struct{} // closed when the stream is closed, by this end or the Network
	closeOnce    sync.Once
}

func (c *trackedConn) markDone() { c.closeOnce.Do(func() { close(c.done) }) }

func (c *trackedConn) closed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// Write sends b, or with Config.Silent discards it while the link is cut
// (the writer cannot tell, as with a network that drops packets).
func (c *trackedConn) Write(b []byte) (int, error) {
	if c.closed() {
		return 0, net.ErrClosed
	}
	if c.net.silentDrop(c, len(b) > 0) {
		return len(b), nil
	}
	written := 0
	for written < len(b) {
		w, r := c.net.reserve(c.to, len(b)-written)
		if c.closed() {
			c.net.settle(w, r, 0)
			return written, net.ErrClosed // closed meanwhile (by the cut it waited for)
		}
		k, err := c.Conn.Write(b[written : written+r])
		written += k
		if c.net.settle(w, r, k) && written < len(b) {
			return written, net.ErrClosed // the armed cut came within b: the rest is lost
		}
		if err != nil {
			if c.selfClosed.Load() {
				err = net.ErrClosed // woken by Close during a cut
			}
			return written, err
		}
	}
	return written, nil
}

// Read reads from the stream. With Config.Silent, while the link is cut
// what arrives is discarded and the peer's close is not seen: Read
// returns only at this end's read deadline or close, or (for a stream
// that lost its peer's close) when Heal closes it.
func (c *trackedConn) Read(b []byte) (int, error) {
	for {
		if c.closed() && c.selfClosed.Load() {
			return 0, net.ErrClosed
		}
		w, r := c.net.reserve(c.from, len(b)) // stop at the armed cut
		if c.closed() && !c.net.silent {
			c.net.settle(w, r, 0)
			return 0, net.ErrClosed // closed meanwhile (by the cut it waited for)
		}
		k, err := c.Conn.Read(b[:r])
		if !c.net.silent {
			c.net.settle(w, r, k)
			return k, err
		}
		if c.selfClosed.Load() {
			c.net.settle(w, r, 0)
			return 0, net.ErrClosed // woken by Close during a cut
		}
		timeout := isTimeout(err)
		if !c.net.silentDrop(c, k > 0 || (err != nil && !timeout)) {
			c.net.settle(w, r, k)
			return k, err
		}
		c.net.settle(w, r, 0) // lost in the cut: not received
		switch {
		case err == nil:
			continue // data lost in the cut
		case timeout:
			return 0, err // this end's own deadline
		}
		// The peer's close (or reset) is lost with everything else.
		return 0, c.waitUnseen(err)
	}
}

// waitUnseen blocks a Read whose peer closed during a silent cut until
// this end's read deadline passes, this end closes the stream or Heal
// does; err is what the read returns then.
func (c *trackedConn) waitUnseen(err error) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if dl := c.readDeadline.Load(); dl != 0 && time.Now().UnixNano() >= dl {
			return os.ErrDeadlineExceeded
		}
		select {
		case <-c.done:
			if c.selfClosed.Load() {
				return net.ErrClosed
			}
			return err
		case <-tick.C:
		}
	}
}

// SetDeadline sets the stream's read and write deadlines.
func (c *trackedConn) SetDeadline(t time.Time) error {
	c.setReadDeadline(t)
	return c.Conn.SetDeadline(t)
}

// SetReadDeadline sets the stream's read deadline.
func (c *trackedConn) SetReadDeadline(t time.Time) error {
	c.setReadDeadline(t)
	return c.Conn.SetReadDeadline(t)
}

func (c *trackedConn) setReadDeadline(t time.Time) {
	if t.IsZero() {
		c.readDeadline.Store(0)
	} else {
		c.readDeadline.Store(t.UnixNano())
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// track registers c so that cutting from<->to closes it. If the link was
// cut between the dial check and now, c is closed at once.
func (n *Network) track(c net.Conn, from, to string) net.Conn {
	n.mu.Lock()
	n.nextID++
	tc := &trackedConn{Conn: c, net: n, id: n.nextID, from: from, to: to, done: make(chan struct{})}
	if n.blockedLocked(from, to) && !n.silent {
		n.mu.Unlock()
		_ = c.Close()
		return tc
	}
	n.conns[tc] = true
	n.mu.Unlock()
	return tc
}

// Close closes the stream and forgets it. With Config.Silent and the
// link cut, the peer must not see the close (its FIN would cross the
// cut): the stream is closed for this end at once and its socket is
// closed by Heal.
func (c *trackedConn) Close() error {
	n := c.net
	c.selfClosed.Store(true)
	n.mu.Lock()
	if n.silent && n.conns[c] && n.blockedLocked(c.from, c.to) {
		c.closing = true
		n.mu.Unlock()
		c.markDone()
		// Wake this end's blocked Read or Write; they return net.ErrClosed.
		_ = c.Conn.SetDeadline(time.Unix(1, 0))
		return nil
	}
	delete(n.conns, c)
	n.mu.Unlock()
	c.markDone()
	return c.Conn.Close()
}

func cutError(from, to string) error {
	return fmt.Errorf("%w: %s <-> %s", ErrLinkCut, from, to)
}
