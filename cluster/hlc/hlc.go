// Package hlc is a hybrid logical clock (Kulkarni et al., "Logical
// Physical Clocks", 2014) for stamping events the cluster must order the
// same way on every node even when the nodes' wall clocks disagree: the
// CONNECT of a client id (package sessions decides which of two sessions
// of one id survives a netsplit by these stamps).
//
// A Timestamp is a wall-clock reading in unix milliseconds and a logical
// counter. A Clock issues timestamps that are
//
//   - strictly increasing on one node, whatever its wall clock does
//     (a clock stepped back does not make a later event look earlier);
//   - greater than every timestamp the node has observed (Observe): an
//     event that happened after the node learned of another one is
//     ordered after it, however far the other node's clock was ahead;
//   - close to the wall clock: the wall part is max(wall ms, the largest
//     wall part seen), so it runs ahead of real time only by as much as
//     the fastest clock the node has heard from.
//
// Events that did not see each other (two CONNECTs on the two sides of a
// netsplit) are ordered by their wall parts, so by the nodes' clocks: with
// skew, the one stamped by the faster clock may win although it came
// second, by at most the skew. The order is still total and the same on
// every node (callers break ties with the node name).
//
// The package does no I/O; Clock is safe for concurrent use and takes its
// wall clock as a function (tests inject skew).
package hlc

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// Timestamp is a hybrid logical clock reading. The zero Timestamp is
// "unknown" and orders before every other.
type Timestamp struct {
	// Wall is unix milliseconds: the largest wall-clock reading seen.
	Wall int64
	// Logical orders timestamps with the same Wall.
	Logical uint32
}

// Compare returns -1, 0 or +1 as t orders before, with or after u.
func (t Timestamp) Compare(u Timestamp) int {
	if c := cmp.Compare(t.Wall, u.Wall); c != 0 {
		return c
	}
	return cmp.Compare(t.Logical, u.Logical)
}

// Less reports whether t orders before u.
func (t Timestamp) Less(u Timestamp) bool { return t.Compare(u) < 0 }

// IsZero reports whether t is the zero (unknown) Timestamp.
func (t Timestamp) IsZero() bool { return t == Timestamp{} }

// Next returns the smallest Timestamp after t.
func (t Timestamp) Next() Timestamp {
	if t.Logical == math.MaxUint32 {
		return Timestamp{Wall: t.Wall + 1}
	}
	return Timestamp{Wall: t.Wall, Logical: t.Logical + 1}
}

// Time returns the wall part as a time.
func (t Timestamp) Time() time.Time { return time.UnixMilli(t.Wall) }

// String formats t as "<unix ms>.<logical>".
func (t Timestamp) String() string { return fmt.Sprintf("%d.%d", t.Wall, t.Logical) }

// Max returns the later of t and u.
func Max(t, u Timestamp) Timestamp {
	if t.Less(u) {
		return u
	}
	return t
}

// MaxWall bounds the wall part a decoder accepts: year 10000 in unix
// milliseconds. Anything larger is a corrupt or hostile stamp that would
// otherwise drag every clock that observes it into the far future.
const MaxWall = 253402300800000

// ErrMalformed is wrapped by decoding errors.
var ErrMalformed = errors.New("hlc: malformed timestamp")

// AppendBinary appends t's encoding to b: uvarint wall, uvarint logical.
// The zero Timestamp encodes as two zero bytes. t.Wall must be in
// 0..MaxWall (Decode refuses anything else); Clock never issues others.
func (t Timestamp) AppendBinary(b []byte) []byte {
	b = binary.AppendUvarint(b, uint64(max(t.Wall, 0)))
	return binary.AppendUvarint(b, uint64(t.Logical))
}

// Decode reads a Timestamp encoded by AppendBinary from the start of b and
// returns it with the number of bytes read. It never panics (fuzzed).
func Decode(b []byte) (Timestamp, int, error) {
	w, n := binary.Uvarint(b)
	if n <= 0 {
		return Timestamp{}, 0, fmt.Errorf("%w: wall: bad varint", ErrMalformed)
	}
	if w > MaxWall {
		return Timestamp{}, 0, fmt.Errorf("%w: wall %d beyond %d", ErrMalformed, w, uint64(MaxWall))
	}
	l, m := binary.Uvarint(b[n:])
	if m <= 0 {
		return Timestamp{}, 0, fmt.Errorf("%w: logical: bad varint", ErrMalformed)
	}
	if l > math.MaxUint32 {
		return Timestamp{}, 0, fmt.Errorf("%w: logical %d exceeds 32 bits", ErrMalformed, l)
	}
	return Timestamp{Wall: int64(w), Logical: uint32(l)}, n + m, nil
}

// Clock issues Timestamps. The zero value is not usable; create one with
// New.
type Clock struct {
	wall func() time.Time

	mu   sync.Mutex
	last Timestamp
}

// New returns a Clock reading wall (nil: time.Now).
func New(wall func() time.Time) *Clock {
	if wall == nil {
		wall = time.Now
	}
	return &Clock{wall: wall}
}

// Now returns a Timestamp greater than every one issued or observed
// before: (max(wall ms, last wall), logical counter).
func (c *Clock) Now() Timestamp {
	pt := min(max(c.wall().UnixMilli(), 0), MaxWall)
	c.mu.Lock()
	defer c.mu.Unlock()
	if pt > c.last.Wall {
		c.last = Timestamp{Wall: pt}
	} else {
		c.last = c.last.Next()
	}
	return c.last
}

// Observe makes every later Now greater than t (a timestamp another node
// issued, received with its event).
func (c *Clock) Observe(t Timestamp) {
	if t.Wall > MaxWall {
		return // not from a Clock; refused by every decoder
	}
	c.mu.Lock()
	c.last = Max(c.last, t)
	c.mu.Unlock()
}

// Last returns the largest Timestamp issued or observed so far.
func (c *Clock) Last() Timestamp {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// Wall returns the clock's wall-clock reading (the injected function).
func (c *Clock) Wall() time.Time { return c.wall() }
