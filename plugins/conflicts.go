package plugins

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Errors of the conflict store.
var (
	// ErrConflictsFull: a policy failed and the conflict store was full, so
	// the merging entry was neither merged nor parked; the caller still
	// owns it and should retry later (or raise plugins.conflicts_limit).
	ErrConflictsFull = errors.New("plugins: conflict store full")
	// ErrNoConflict: no parked conflict has that id.
	ErrNoConflict = errors.New("plugins: no such conflict")
)

// FailureKind classifies why a merge was parked.
type FailureKind string

// Failure kinds; also the "reason" label of mendmq_policy_conflicts_total.
const (
	// FailureTrap: the module trapped or exited (a Go policy's fatal error).
	FailureTrap FailureKind = "trap"
	// FailureTimeout: the call outlived plugins.call_timeout.
	FailureTimeout FailureKind = "timeout"
	// FailureGarbage: the module's answer broke the ABI.
	FailureGarbage FailureKind = "garbage"
	// FailureRefused: the policy answered Fail (sdk.Fail, mendmq_fail).
	FailureRefused FailureKind = "refused"
	// FailureUnavailable: no instance could be started.
	FailureUnavailable FailureKind = "unavailable"
)

// Conflict is a merge a policy could not decide. The existing entry was
// kept; Merging waits here for an operator to resolve (apply it) or drop it.
type Conflict struct {
	// ID identifies the conflict (unique per Registry, never reused).
	ID uint64 `json:"id"`
	// Map and Policy say where it happened.
	Map    string `json:"map"`
	Policy string `json:"policy"`
	// Kind and Reason say why.
	Kind   FailureKind `json:"kind"`
	Reason string      `json:"reason"`
	// Time is when it was parked.
	Time time.Time `json:"time"`
	// Merging is the entry that was not merged (a private copy).
	Merging EntryView `json:"merging"`
	// Existing is a copy of the entry that was kept, nil if absent.
	Existing *EntryView `json:"existing,omitempty"`
}

// conflictStore is a bounded, in-memory parking lot for failed merges. It
// refuses new conflicts when full rather than evicting old ones: an
// evicted conflict would be lost data.
type conflictStore struct {
	mu     sync.Mutex
	limit  int
	nextID uint64
	byID   map[uint64]*Conflict
	order  []uint64 // ids in parking order (may hold removed ids, compacted lazily)
}

func newConflictStore(limit int) *conflictStore {
	return &conflictStore{limit: limit, nextID: 1, byID: map[uint64]*Conflict{}}
}

func (s *conflictStore) setLimit(limit int) {
	s.mu.Lock()
	s.limit = limit
	s.mu.Unlock()
}

// park stores a copy of the entries and returns the new conflict's id, or
// ErrConflictsFull.
func (s *conflictStore) park(now time.Time, mapName, policy string, kind FailureKind, reason string, merging, existing *EntryView) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.byID) >= s.limit {
		return 0, fmt.Errorf("%w (%d parked, plugins.conflicts_limit %d)", ErrConflictsFull, len(s.byID), s.limit)
	}
	c := &Conflict{
		ID: s.nextID, Map: mapName, Policy: policy, Kind: kind, Reason: reason,
		Time: now, Merging: copyEntry(merging),
	}
	if existing != nil {
		e := copyEntry(existing)
		c.Existing = &e
	}
	s.nextID++
	s.byID[c.ID] = c
	s.order = append(s.order, c.ID)
	if len(s.order) > 2*len(s.byID)+64 {
		s.order = slices.DeleteFunc(s.order, func(id uint64) bool { return s.byID[id] == nil })
	}
	return c.ID, nil
}

// list returns copies of the parked conflicts, oldest first.
func (s *conflictStore) list() []Conflict {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Conflict, 0, len(s.byID))
	for _, id := range s.order {
		if c := s.byID[id]; c != nil {
			out = append(out, *c)
		}
	}
	return out
}

func (s *conflictStore) get(id uint64) (Conflict, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.byID[id]
	if c == nil {
		return Conflict{}, false
	}
	return *c, true
}

// remove deletes and returns a conflict.
func (s *conflictStore) remove(id uint64) (Conflict, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.byID[id]
	if c == nil {
		return Conflict{}, fmt.Errorf("%w: %d", ErrNoConflict, id)
	}
	delete(s.byID, id)
	return *c, nil
}

func (s *conflictStore) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byID)
}

func copyEntry(e *EntryView) EntryView {
	c := *e
	c.Key = append([]byte{}, e.Key...)
	c.Value = append([]byte{}, e.Value...)
	return c
}
