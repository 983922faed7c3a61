package sdk

import "runtime"

// dispatcher turns request buffers into results buffers by calling the
// registered policy. The wasip1 exports drive the process-wide one (std);
// tests drive their own on any GOOS.
//
// A module instance is single-threaded and the host never calls into it
// concurrently, so dispatcher needs no locking.
type dispatcher struct {
	policy Policy
	// in is the buffer mendmq_alloc hands to the host; it stays valid until
	// the next mendmq_alloc call.
	in []byte
	// out is the results buffer, reused across calls; it stays valid until
	// the next merge or merge_batch call.
	out []byte
	// items is reused across calls to avoid allocating per merge.
	items []Item
	// mapName caches the last map name so a run of merges for one map
	// converts it to a string once.
	mapName string
}

// std is the dispatcher behind the module's exports.
var std dispatcher

// Register installs p as the module's merge policy. Call it exactly once,
// from an init function of package main: with -buildmode=c-shared the host
// runs package initialisers (export _initialize) but never main.main.
func Register(p Policy) {
	if p == nil {
		panic("sdk: Register(nil)")
	}
	if std.policy != nil {
		panic("sdk: Register called twice; a module holds exactly one policy")
	}
	std.policy = p
}

// minInput is the smallest input buffer alloc hands out, so small requests
// never reallocate.
const minInput = 4096

// alloc returns the input buffer, grown to at least n bytes. Growing drops
// the old buffer: the host only calls alloc between merges.
func (d *dispatcher) alloc(n uint32) []byte {
	if uint64(cap(d.in)) < uint64(n) || cap(d.in) == 0 {
		c := max(uint64(n), minInput, 2*uint64(cap(d.in)))
		c = min(c, maxBufferLen)
		if c < uint64(n) {
			return nil
		}
		d.in = make([]byte, c)
	}
	return d.in[:cap(d.in)]
}

// handle decodes req, runs the policy on every item and returns the encoded
// results. A merge (batch false) must carry exactly one item. The returned
// slice aliases d.out.
func (d *dispatcher) handle(req []byte, batch bool) ([]byte, error) {
	name, items, err := DecodeRequest(req, d.items[:0])
	d.items = items[:0]
	if err != nil {
		return nil, err
	}
	if !batch && len(items) != 1 {
		return nil, malformed("merge got %d items, want 1 (use merge_batch)", uint64(len(items)))
	}
	if string(name) != d.mapName {
		d.mapName = string(name)
	}
	out := AppendResultsHeader(d.out[:0], len(items))
	for i := range items {
		it := &items[i]
		var existing *EntryView
		if it.HasExisting {
			existing = &it.Existing
		}
		out = AppendResult(out, d.call(&it.Merging, existing))
	}
	d.out = out
	return out, nil
}

// call runs the policy on one item. A panic becomes a Fail result: the
// instance stays usable and the host parks only this entry.
func (d *dispatcher) call(merging, existing *EntryView) (r Result) {
	if d.policy == nil {
		return Fail("no policy registered: call sdk.Register from an init function")
	}
	defer func() {
		if p := recover(); p != nil {
			r = Fail("policy panicked: " + panicText(p))
		}
	}()
	return d.policy(d.mapName, merging, existing)
}

// panicText renders a recovered value without fmt.
func panicText(p any) string {
	switch v := p.(type) {
	case runtime.Error:
		return v.Error()
	case error:
		return v.Error()
	case string:
		return v
	case interface{ String() string }:
		return v.String()
	}
	return "non-error value"
}
