package router

import "sync"

// dedup remembers which QoS 1/2 publishes each origin node forwarded here
// recently, by their ids, so that a publish that arrives twice — a held
// message redelivered after a call that timed out, or a drain retried
// after its answer was lost — reaches the subscribers once.
//
// An origin numbers its publishes with one increasing counter started at
// its clock (the broker's publish ids), so each origin gets a sliding
// window of window ids: an id below the window is older than anything
// still in flight and counts as new (the counter restarted, or it is
// merely very late); it is counted as unknown.
type dedup struct {
	mu      sync.Mutex
	origins map[string]*idWindow
}

// window is how many recent ids per origin are remembered (a bit each).
const window = 1 << 16

type idWindow struct {
	base uint64 // the lowest id the bits cover
	bits [window / 64]uint64
}

// first reports whether (origin, id) was not seen before, and records it.
func (d *dedup) first(origin string, id uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.origins == nil {
		d.origins = map[string]*idWindow{}
	}
	w := d.origins[origin]
	if w == nil {
		w = &idWindow{base: id}
		d.origins[origin] = w
	}
	return w.first(id)
}

func (w *idWindow) first(id uint64) bool {
	if id < w.base {
		return true // older than the window: assume new
	}
	if id >= w.base+window {
		w.slide(id - window + 1)
	}
	i := id % window
	word, bit := i/64, uint64(1)<<(i%64)
	if w.bits[word]&bit != 0 {
		return false
	}
	w.bits[word] |= bit
	return true
}

// unsee forgets (origin, id): it was not delivered after all.
func (d *dedup) unsee(origin string, id uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	w := d.origins[origin]
	if w == nil || id < w.base || id >= w.base+window {
		return
	}
	i := id % window
	w.bits[i/64] &^= uint64(1) << (i % 64)
}

// slide moves the window's base up to base, forgetting the ids below it.
func (w *idWindow) slide(base uint64) {
	if base-w.base >= window {
		w.bits = [window / 64]uint64{}
	} else {
		for id := w.base; id < base; id++ {
			i := id % window
			w.bits[i/64] &^= uint64(1) << (i % 64)
		}
	}
	w.base = base
}

// forget drops an origin's window (the node was removed).
func (d *dedup) forget(origin string) {
	d.mu.Lock()
	delete(d.origins, origin)
	d.mu.Unlock()
}
