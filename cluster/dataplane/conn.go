package dataplane

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// conn runs one authenticated connection: a reader (this goroutine) and a
// writer draining q. An outbound conn writes the peer's queue and reads
// replies; an inbound conn reads one-way frames and calls and writes
// replies from its own queue.
type conn struct {
	pl       *Plane
	p        *peer
	raw      net.Conn      // the socket, tracked by the Plane
	nc       net.Conn      // raw, or TLS over it
	br       *bufio.Reader // over an idleReader, shared with the handshake
	outbound bool
	q        *sendQueue

	// Inbound only: calls go to long-lived workers, at most
	// MaxConcurrentCalls, started on demand and stopped with the
	// connection. A goroutine per call would be cheap to start, but
	// handlers run deep (the cluster injects a PUBLISH into the MQTT
	// broker by value) and each new goroutine grew its stack two or
	// three times per call: 19% of a receiving node's CPU under QoS 1
	// forwarding. A worker keeps its grown stack.
	callq   chan frame   // unbuffered: handed to an idle worker
	workers int          // started; touched by the reader only
	inline  InlineCaller // nil unless the Handler implements it

	done chan struct{}
	once sync.Once
	err  error
	wg   sync.WaitGroup // the writer
}

func newConn(pl *Plane, p *peer, raw, nc net.Conn, br *bufio.Reader, outbound bool, q *sendQueue) *conn {
	c := &conn{pl: pl, p: p, raw: raw, nc: nc, br: br, outbound: outbound, q: q, done: make(chan struct{})}
	if !outbound {
		c.callq = make(chan frame)
		c.inline, _ = pl.h.(InlineCaller)
	}
	return c
}

// close shuts the connection down once; the first error is kept. It
// closes the socket, not the TLS layer: a TLS close_notify could block
// on a peer that stopped reading, and framing already detects truncation.
func (c *conn) close(err error) {
	c.once.Do(func() {
		c.err = err
		close(c.done)
		_ = c.raw.Close()
	})
}

// run reads until the connection fails, then stops the writer and
// returns why the connection ended.
func (c *conn) run() error {
	c.wg.Add(1)
	go c.writeLoop()
	err := c.readLoop()
	c.close(err)
	c.wg.Wait()
	c.pl.untrack(c.raw)
	if !c.outbound {
		// Replies that could not be written are lost with the connection.
		c.q.close()
	}
	return c.err
}

// idleReader is what a connection's bufio.Reader reads from. Once idle
// is set (after the handshake, which runs under its own overall
// deadline), it refreshes the read deadline before every read from the
// socket, so a connection that receives nothing for idle fails.
type idleReader struct {
	nc   net.Conn
	idle time.Duration
	// recv, once set, gets the time (Unix ns) of every read that brought
	// bytes: the peer's last sign of life (PeerStats.LastReceived).
	recv *atomic.Int64
}

func (r *idleReader) Read(b []byte) (int, error) {
	if r.idle > 0 {
		if err := r.nc.SetReadDeadline(time.Now().Add(r.idle)); err != nil {
			return 0, err
		}
	}
	n, err := r.nc.Read(b)
	if n > 0 && r.recv != nil {
		r.recv.Store(time.Now().UnixNano())
	}
	return n, err
}

var errIdle = errors.New("dataplane: nothing received within the idle timeout")

func (c *conn) readLoop() error {
	fr := frameReader{r: c.br, max: c.pl.cfg.MaxFrameSize}
	for {
		f, err := fr.next()
		if err != nil {
			var ne net.Error
			switch {
			case isProtocolError(err):
				c.protocolError(err)
			case errors.As(err, &ne) && ne.Timeout():
				err = errIdle
			}
			return err
		}
		if f.flags&flagControl != 0 {
			continue // keepalive: its arrival refreshed the deadline
		}
		c.p.framesRecv.Add(1)
		c.p.bytesRecv.Add(uint64(headerLen + f.bodyLen()))
		if c.outbound {
			if f.flags&flagReply == 0 {
				err := fmt.Errorf("%w: frame with flags %#02x on a connection this node dialed", errBadFlags, f.flags)
				c.protocolError(err)
				return err
			}
			r := callResult{payload: f.payload}
			if f.flags&flagError != 0 {
				r = callResult{remote: string(f.payload)}
			}
			c.p.resolve(f.id, r)
			continue
		}
		switch {
		case f.flags&flagReply != 0:
			err := fmt.Errorf("%w: reply on a connection the peer dialed", errBadFlags)
			c.protocolError(err)
			return err
		case f.flags&flagCall != 0 && c.inline != nil && c.inline.InlineCall(f.typ):
			c.serveCall(f)
		case f.flags&flagCall != 0:
			if !c.dispatchCall(f) {
				return c.err
			}
		default:
			c.pl.h.HandleFrame(c.p.name, f.typ, f.payload)
		}
	}
}

func (c *conn) protocolError(err error) {
	c.pl.protocolErrors.Add(1)
	c.p.recordErr(err)
	c.pl.log.Warn("closing connection: peer violated the frame protocol", "peer", c.p.name, "err", err)
}

// dispatchCall hands f to an idle worker, starts one if fewer than
// MaxConcurrentCalls run, or else waits for one to finish (back-pressure
// on the peer). It returns false if the connection closed meanwhile.
func (c *conn) dispatchCall(f frame) bool {
	select {
	case c.callq <- f:
		return true
	default:
	}
	if c.workers < c.pl.cfg.MaxConcurrentCalls {
		c.workers++
		go c.callWorker(f)
		return true
	}
	select {
	case c.callq <- f:
		return true
	case <-c.done:
		return false
	}
}

// callWorker serves f, then further calls until the connection closes.
// Nothing waits for it: a handler that outlives the connection finds its
// reply dropped, and the worker then ends.
func (c *conn) callWorker(f frame) {
	for {
		c.serveCall(f)
		select {
		case f = <-c.callq:
		case <-c.done:
			return
		}
	}
}

// serveCall runs HandleCall and queues the reply.
func (c *conn) serveCall(f frame) {
	resp, err := c.pl.h.HandleCall(c.p.name, f.typ, f.payload)
	reply := frame{typ: f.typ, flags: flagReply, id: f.id, payload: resp}
	if err == nil && len(resp)+idLen > c.pl.cfg.MaxFrameSize {
		err = fmt.Errorf("response of %d bytes exceeds the maximum frame size", len(resp))
	}
	if err != nil {
		msg := err.Error()
		if len(msg)+idLen > c.pl.cfg.MaxFrameSize {
			msg = msg[:c.pl.cfg.MaxFrameSize-idLen]
		}
		reply.flags |= flagError
		reply.payload = []byte(msg)
	}
	if err := c.q.push(context.Background(), c.done, reply); err != nil {
		c.p.dropped.Add(1)
	}
}

// writeLoop writes queued frames, flushing when the queue runs dry, and
// sends a keepalive when nothing was written for KeepaliveInterval.
func (c *conn) writeLoop() {
	defer c.wg.Done()
	bw := bufio.NewWriterSize(c.nc, c.pl.cfg.BufferSize)
	tick := time.NewTicker(c.pl.cfg.KeepaliveInterval)
	defer tick.Stop()
	var batch []frame
	wrote := false
	fail := func(err error, unsent int) {
		if unsent > 0 {
			c.p.dropped.Add(uint64(unsent))
		}
		c.close(err)
	}
	yielded := false // since the last flush
	for {
		batch = c.q.takeAll(batch)
		if len(batch) == 0 && bw.Buffered() > 0 && !yielded {
			// Before flushing, let the goroutines that are ready to run
			// queue their frames (callers on the dialing side, call
			// workers' replies on the accepting side): one write for
			// them all. Under QoS 1 forwarding this cut the writes per
			// call round trip from ~1.5 to ~0.1 (BenchmarkCallLoad),
			// and a loopback write costs the sender ~10 µs of CPU on a
			// virtual machine. At most once per flush, so a steady
			// stream cannot postpone the flush; with nothing else
			// runnable it returns at once.
			yielded = true
			runtime.Gosched()
			batch = c.q.takeAll(batch)
		}
		if len(batch) == 0 {
			if bw.Buffered() > 0 {
				if err := bw.Flush(); err != nil {
					fail(err, 0)
					return
				}
			}
			yielded = false
			select {
			case <-c.done:
				return
			case <-c.q.ready:
			case <-tick.C:
				if !wrote {
					ka := frame{typ: ctlKeepalive, flags: flagControl}
					if _, err := writeFrame(bw, &ka); err != nil {
						fail(err, 0)
						return
					}
					if err := bw.Flush(); err != nil {
						fail(err, 0)
						return
					}
				}
				wrote = false
			}
			continue
		}
		var frames, bytes uint64
		for i := range batch {
			n, err := writeFrame(bw, &batch[i])
			if err != nil {
				c.p.framesSent.Add(frames)
				c.p.bytesSent.Add(bytes)
				fail(err, len(batch)-i)
				clear(batch)
				return
			}
			frames++
			bytes += uint64(n)
		}
		c.p.framesSent.Add(frames)
		c.p.bytesSent.Add(bytes)
		clear(batch)
		wrote = true
	}
}
