package plugins

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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

// ConflictStore keeps parked conflicts across restarts (the broker gives
// the registry one in its storage file: SetConflictStore). Its methods are
// called one at a time.
type ConflictStore interface {
	// SaveConflicts stores conflicts (new ones) and next, the id the
	// next conflict will get, in one write.
	SaveConflicts(cs []Conflict, next uint64) error
	// DeleteConflict removes conflict id.
	DeleteConflict(id uint64) error
	// LoadConflicts returns the stored conflicts and the stored next id
	// (0 if none).
	LoadConflicts() (cs []Conflict, next uint64, err error)
}

// conflictStore is a bounded parking lot for failed merges, in memory and,
// once it has one, in a ConflictStore. It refuses new conflicts when full
// rather than evicting old ones: an evicted conflict would be lost data.
type conflictStore struct {
	mu      sync.Mutex
	limit   int
	nextID  uint64
	byID    map[uint64]*Conflict
	order   []uint64 // ids in parking order (may hold removed ids, compacted lazily)
	persist ConflictStore
}

// attach makes cs the conflicts' storage: the conflicts it holds are
// parked again (the limit does not apply to them: they are data), and
// those parked before are stored in it.
func (s *conflictStore) attach(cs ConflictStore) (loaded int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	stored, next, err := cs.LoadConflicts()
	if err != nil {
		return 0, fmt.Errorf("load parked conflicts: %w", err)
	}
	var mine []Conflict
	for _, id := range s.order {
		if c := s.byID[id]; c != nil {
			mine = append(mine, *c)
		}
	}
	// Conflicts parked before are numbered again after the stored ones,
	// which keep their ids (an operator may have noted them).
	s.nextID = max(next, 1)
	for _, c := range stored {
		s.nextID = max(s.nextID, c.ID+1)
	}
	s.byID, s.order = map[uint64]*Conflict{}, nil
	for _, c := range stored {
		s.byID[c.ID] = &c
		s.order = append(s.order, c.ID)
	}
	slices.Sort(s.order)
	for i := range mine {
		mine[i].ID = s.nextID
		s.nextID++
		s.byID[mine[i].ID] = &mine[i]
		s.order = append(s.order, mine[i].ID)
	}
	if err := cs.SaveConflicts(mine, s.nextID); err != nil {
		return 0, fmt.Errorf("store parked conflicts: %w", err)
	}
	s.persist = cs
	return len(stored), nil
}

// save stores newly parked conflicts, if the store has storage. On error
// they stay parked in memory (lost in a restart).
func (s *conflictStore) save(cs []Conflict) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.persist == nil || len(cs) == 0 {
		return nil
	}
	return s.persist.SaveConflicts(cs, s.nextID)
}

func newConflictStore(limit int) *conflictStore {
	return &conflictStore{limit: limit, nextID: 1, byID: map[uint64]*Conflict{}}
}

func (s *conflictStore) setLimit(limit int) {
	s.mu.Lock()
	s.limit = limit
	s.mu.Unlock()
}

// park stores a copy of the entries and returns the new conflict, or
// ErrConflictsFull; the caller saves it.
func (s *conflictStore) park(now time.Time, mapName, policy string, kind FailureKind, reason string, merging, existing *EntryView) (Conflict, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.byID) >= s.limit {
		return Conflict{}, fmt.Errorf("%w (%d parked, plugins.conflicts_limit %d)", ErrConflictsFull, len(s.byID), s.limit)
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
	return *c, nil
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

// remove deletes and returns a conflict: from storage first, so one that
// cannot be deleted there stays (were it only forgotten here, a restart
// would bring it back, and resolve it a second time).
func (s *conflictStore) remove(id uint64) (Conflict, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.byID[id]
	if c == nil {
		return Conflict{}, fmt.Errorf("%w: %d", ErrNoConflict, id)
	}
	if s.persist != nil {
		if err := s.persist.DeleteConflict(id); err != nil {
			return Conflict{}, fmt.Errorf("delete conflict %d from storage: %w", id, err)
		}
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

// park keeps the existing entries and parks the merging ones. It returns
// ErrConflictsFull if some could not be parked (those are Unmerged).
func (r *Registry) park(p *policy, mapName string, items []MergeItem, out []Result, kind FailureKind, cause error) error {
	now := r.now()
	var full error
	parked := 0
	var batch []Conflict
	for i := range items {
		c, err := r.conflicts.park(now, mapName, p.name, kind, cause.Error(), items[i].Merging, items[i].Existing)
		if err != nil {
			out[i] = Result{Verdict: KeepExisting, Unmerged: true}
			full = err
			r.metrics.rejected.WithLabelValues(p.name).Inc()
			continue
		}
		out[i] = Result{Verdict: KeepExisting, ConflictID: c.ID}
		batch = append(batch, c)
		parked++
	}
	if err := r.conflicts.save(batch); err != nil {
		r.logger.Error("parked conflicts not stored: they are kept in memory only, and lost if the node restarts before an operator resolves them",
			"policy", p.name, "map", mapName, "conflicts", len(batch), "err", err)
	}
	if parked > 0 {
		r.metrics.conflicts.WithLabelValues(p.name, string(kind)).Add(float64(parked))
	}
	level := slog.LevelWarn
	if full != nil {
		level = slog.LevelError
	}
	r.logger.Log(context.Background(), level, "merge policy failed; existing entries kept, merging entries parked",
		"policy", p.name, "map", mapName, "kind", kind, "entries", len(items), "parked", parked,
		"first_key", string(clip(items[0].Merging.Key)), "err", cause, "store_err", full)
	return full
}

// SetConflictStore keeps the parked conflicts in cs from now on: those it
// holds (parked before a restart) are parked again, and those parked
// before this call are stored in it. It returns how many it loaded.
func (r *Registry) SetConflictStore(cs ConflictStore) (int, error) {
	return r.conflicts.attach(cs)
}

// Conflicts lists the parked conflicts, oldest first.
func (r *Registry) Conflicts() []Conflict { return r.conflicts.list() }

// Conflict returns one parked conflict.
func (r *Registry) Conflict(id uint64) (Conflict, bool) { return r.conflicts.get(id) }

// ResolveConflict hands conflict id to apply — which writes the merging
// entry (or a value the operator chose) into the map — and removes the
// conflict only if apply succeeds, so a failed write loses nothing.
// Concurrent resolutions of one id may both call apply; only one removes it.
func (r *Registry) ResolveConflict(id uint64, apply func(Conflict) error) error {
	c, ok := r.conflicts.get(id)
	if !ok {
		return fmt.Errorf("%w: %d", ErrNoConflict, id)
	}
	if err := apply(c); err != nil {
		return fmt.Errorf("plugins: resolve conflict %d (map %s): %w", id, c.Map, err)
	}
	_, err := r.conflicts.remove(id)
	return err
}

// DropConflict discards conflict id: the existing entry stays as it is.
func (r *Registry) DropConflict(id uint64) error {
	_, err := r.conflicts.remove(id)
	return err
}
