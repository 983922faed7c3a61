package dataplane

import (
	"context"
	"sync"
)

// sendQueue is a bounded FIFO of frames waiting for a connection's
// writer, bounded both in frames and in payload bytes. Producers never
// block in tryPush; push blocks until there is room. The single consumer
// takes everything queued at once, which is what batches small frames
// into one write.
type sendQueue struct {
	maxFrames, maxBytes int

	mu     sync.Mutex
	frames []frame
	bytes  int
	closed bool
	ready  chan struct{} // capacity 1: the queue became non-empty
	space  chan struct{} // closed when room is made; nil if nobody waits
}

func newSendQueue(maxFrames, maxBytes int) *sendQueue {
	return &sendQueue{maxFrames: maxFrames, maxBytes: maxBytes, ready: make(chan struct{}, 1)}
}

// fits reports whether a frame of n payload bytes may be queued now. A
// frame larger than maxBytes is still accepted into an empty queue, so
// that it is not refused forever.
func (q *sendQueue) fits(n int) bool {
	if len(q.frames) >= q.maxFrames {
		return false
	}
	return q.bytes+n <= q.maxBytes || len(q.frames) == 0
}

func (q *sendQueue) appendLocked(f frame) {
	wasEmpty := len(q.frames) == 0
	q.frames = append(q.frames, f)
	q.bytes += len(f.payload)
	if wasEmpty {
		select {
		case q.ready <- struct{}{}:
		default:
		}
	}
}

// tryPush queues f unless the queue is full or closed.
func (q *sendQueue) tryPush(f frame) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return ErrClosed
	}
	if !q.fits(len(f.payload)) {
		return ErrQueueFull
	}
	q.appendLocked(f)
	return nil
}

// push queues f, waiting for room until ctx is done or stop is closed.
func (q *sendQueue) push(ctx context.Context, stop <-chan struct{}, f frame) error {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return ErrClosed
		}
		if q.fits(len(f.payload)) {
			q.appendLocked(f)
			q.mu.Unlock()
			return nil
		}
		if q.space == nil {
			q.space = make(chan struct{})
		}
		space := q.space
		q.mu.Unlock()
		select {
		case <-space:
		case <-ctx.Done():
			return ctx.Err()
		case <-stop:
			return ErrClosed
		}
	}
}

// takeAll removes and returns every queued frame, reusing buf's array.
func (q *sendQueue) takeAll(buf []frame) []frame {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.frames) == 0 {
		return buf[:0]
	}
	out := q.frames
	q.frames = buf[:0]
	q.bytes = 0
	q.wakeLocked()
	return out
}

func (q *sendQueue) wakeLocked() {
	if q.space != nil {
		close(q.space)
		q.space = nil
	}
}

// drain empties the queue (frames are dropped) and returns what was in it.
func (q *sendQueue) drain() []frame {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.frames
	q.frames = nil
	q.bytes = 0
	q.wakeLocked()
	return out
}

// close refuses further frames and wakes blocked producers.
func (q *sendQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	q.wakeLocked()
}

// length returns the queued frames and payload bytes.
func (q *sendQueue) length() (frames, bytes int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.frames), q.bytes
}
