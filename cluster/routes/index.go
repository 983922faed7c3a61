package routes

import (
	"maps"
	"slices"
	"strings"
	"sync"
)

// Result is the answer of Match: who needs a copy of a published message.
type Result struct {
	// Nodes are the nodes (sorted, unique) hosting at least one session
	// with a matching ordinary (non-shared) subscription. The local node
	// appears too when it matches; the caller skips itself.
	Nodes []string
	// Shared has one element per matching shared subscription, i.e. per
	// (group, filter) pair, sorted by group then filter. Each message goes
	// to exactly one member of each, so the publisher picks one node of
	// each element's Nodes (the local node included).
	Shared []SharedMatch
}

// SharedMatch is one matching shared subscription $share/Group/Filter.
type SharedMatch struct {
	Group  string
	Filter string
	// Nodes (sorted, unique) host at least one member of the group with
	// this filter.
	Nodes []string
}

// Index maps topic filters to the cluster nodes whose sessions subscribed to
// them. It is derived from the replicated "sub" table: call Set whenever a
// client's resolved record changes and Delete when it is gone.
//
// Concurrency: Index is safe for concurrent use. Match takes a read lock for
// the duration of one trie walk, Set and Delete take the write lock; many
// publishers can match at once while one applier updates. (A copy-on-write
// trie was rejected: a write must copy every node on its path including
// their child maps, and a level such as "devices/<id>" has one child per
// client, making bulk loads quadratic.)
type Index struct {
	mu      sync.RWMutex
	root    *tnode
	clients map[string]SessionRecord
	perNode map[string]int // indexed subscriptions per node
}

// tnode is one level of the filter trie.
type tnode struct {
	children map[string]*tnode
	// filter is the (non-shared part of the) filter that ends here; set
	// while direct or shared is non-empty.
	filter string
	direct []nodeCount            // ordinary subscriptions ending here, sorted by node
	shared map[string][]nodeCount // group -> members ending here, sorted by node
}

type nodeCount struct {
	node string
	n    int
}

// NewIndex returns an empty index.
func NewIndex() *Index {
	return &Index{root: &tnode{}, clients: map[string]SessionRecord{}, perNode: map[string]int{}}
}

// Set records rec as the session of clientID, replacing any previous
// record. Subscriptions whose filter is invalid (see ParseFilter) are kept
// in the record but not indexed. The index keeps rec; the caller must not
// modify it afterwards.
func (ix *Index) Set(clientID string, rec SessionRecord) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	old, had := ix.clients[clientID]
	ix.clients[clientID] = rec
	if had && old.Node == rec.Node {
		// Usual case (one subscription added or removed): touch only the
		// filters that changed.
		count := make(map[string]int, len(old.Subs))
		for _, s := range old.Subs {
			count[s.Filter]--
		}
		for _, s := range rec.Subs {
			count[s.Filter]++
		}
		for _, f := range slices.Sorted(maps.Keys(count)) {
			for d := count[f]; d < 0; d++ {
				ix.remove(old.Node, f)
			}
			for d := count[f]; d > 0; d-- {
				ix.add(rec.Node, f)
			}
		}
		return
	}
	if had {
		for _, s := range old.Subs {
			ix.remove(old.Node, s.Filter)
		}
	}
	for _, s := range rec.Subs {
		ix.add(rec.Node, s.Filter)
	}
}

// Delete forgets the session of clientID, if any.
func (ix *Index) Delete(clientID string) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	old, had := ix.clients[clientID]
	if !had {
		return
	}
	delete(ix.clients, clientID)
	for _, s := range old.Subs {
		ix.remove(old.Node, s.Filter)
	}
}

// Session returns the record of clientID as last Set.
func (ix *Index) Session(clientID string) (SessionRecord, bool) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	r, ok := ix.clients[clientID]
	return r, ok
}

// Sessions returns the number of sessions recorded.
func (ix *Index) Sessions() int {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return len(ix.clients)
}

// NodeCounts returns, per node, the number of indexed subscriptions (shared
// ones included) of sessions it hosts, for metrics. The map is a copy.
func (ix *Index) NodeCounts() map[string]int {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return maps.Clone(ix.perNode)
}

func (ix *Index) add(node, filter string) {
	group, f, ok := ParseFilter(filter)
	if !ok {
		return
	}
	n := ix.root
	for rest := f; ; {
		level, tail, more := strings.Cut(rest, "/")
		c := n.children[level]
		if c == nil {
			c = &tnode{}
			if n.children == nil {
				n.children = map[string]*tnode{}
			}
			n.children[level] = c
		}
		n = c
		if !more {
			break
		}
		rest = tail
	}
	n.filter = f
	if group == "" {
		n.direct = addCount(n.direct, node)
	} else {
		if n.shared == nil {
			n.shared = map[string][]nodeCount{}
		}
		n.shared[group] = addCount(n.shared[group], node)
	}
	ix.perNode[node]++
}

func (ix *Index) remove(node, filter string) {
	group, f, ok := ParseFilter(filter)
	if !ok {
		return
	}
	// Remember the path so emptied nodes can be pruned bottom-up.
	path := make([]*tnode, 0, 8)
	levels := make([]string, 0, 8)
	n := ix.root
	for rest := f; ; {
		level, tail, more := strings.Cut(rest, "/")
		c := n.children[level]
		if c == nil {
			return
		}
		path = append(path, n)
		levels = append(levels, level)
		n = c
		if !more {
			break
		}
		rest = tail
	}
	var removed bool
	if group == "" {
		n.direct, removed = removeCount(n.direct, node)
	} else {
		var members []nodeCount
		members, removed = removeCount(n.shared[group], node)
		if len(members) == 0 {
			delete(n.shared, group)
		} else {
			n.shared[group] = members
		}
	}
	if !removed {
		return
	}
	if ix.perNode[node]--; ix.perNode[node] == 0 {
		delete(ix.perNode, node)
	}
	if len(n.direct) == 0 && len(n.shared) == 0 {
		n.filter = ""
	}
	for i := len(path) - 1; i >= 0 && n.empty(); i-- {
		delete(path[i].children, levels[i])
		n = path[i]
	}
}

func (n *tnode) empty() bool {
	return len(n.children) == 0 && len(n.direct) == 0 && len(n.shared) == 0
}

func addCount(cs []nodeCount, node string) []nodeCount {
	i, found := slices.BinarySearchFunc(cs, node, func(c nodeCount, n string) int { return strings.Compare(c.node, n) })
	if found {
		cs[i].n++
		return cs
	}
	return slices.Insert(cs, i, nodeCount{node: node, n: 1})
}

func removeCount(cs []nodeCount, node string) ([]nodeCount, bool) {
	i, found := slices.BinarySearchFunc(cs, node, func(c nodeCount, n string) int { return strings.Compare(c.node, n) })
	if !found {
		return cs, false
	}
	if cs[i].n--; cs[i].n == 0 {
		cs = slices.Delete(cs, i, i+1)
	}
	return cs, true
}

// Match returns who needs a copy of a message published to topic. See
// MatchInto to reuse a Result across calls.
func (ix *Index) Match(topic string) Result {
	var r Result
	ix.MatchInto(topic, &r)
	return r
}

// MatchInto is Match writing into r, reusing its slices. Matching follows
// MQTT 4.7: '+' matches exactly one level, '#' any number of trailing levels
// including none (so "a/#" matches "a"), empty levels are ordinary levels,
// and a topic starting with '$' is not matched by a filter whose first level
// is a wildcard [MQTT-4.7.2-1].
func (ix *Index) MatchInto(topic string, r *Result) {
	r.Nodes = r.Nodes[:0]
	for i := range r.Shared {
		r.Shared[i].Nodes = r.Shared[i].Nodes[:0]
	}
	m := matcher{r: r, shared: r.Shared[:0], dollar: strings.HasPrefix(topic, "$")}
	ix.mu.RLock()
	m.walk(ix.root, topic, false, true)
	ix.mu.RUnlock()
	r.Shared = m.shared
	slices.Sort(r.Nodes)
	slices.SortFunc(r.Shared, func(a, b SharedMatch) int {
		if c := strings.Compare(a.Group, b.Group); c != 0 {
			return c
		}
		return strings.Compare(a.Filter, b.Filter)
	})
}

type matcher struct {
	r      *Result
	shared []SharedMatch
	dollar bool
}

// walk matches the remaining levels rest (none left when end) below n.
// Every trie node is visited at most once per topic, so each shared
// (group, filter) pair is reported once.
func (m *matcher) walk(n *tnode, rest string, end, root bool) {
	wild := !(root && m.dollar)
	if wild {
		if c := n.children["#"]; c != nil {
			m.collect(c)
		}
	}
	if end {
		m.collect(n)
		return
	}
	level, tail, more := strings.Cut(rest, "/")
	// A topic level never holds a wildcard [MQTT-4.7.1-1]; were one to
	// slip through, the wildcard branches below already cover it, and
	// looking it up as a literal would visit those nodes twice.
	if level != "+" && level != "#" {
		if c := n.children[level]; c != nil {
			m.walk(c, tail, !more, false)
		}
	}
	if wild {
		if c := n.children["+"]; c != nil {
			m.walk(c, tail, !more, false)
		}
	}
}

func (m *matcher) collect(n *tnode) {
	for _, c := range n.direct {
		if !slices.Contains(m.r.Nodes, c.node) {
			m.r.Nodes = append(m.r.Nodes, c.node)
		}
	}
	for group, members := range n.shared {
		var sm SharedMatch
		if len(m.shared) < cap(m.shared) {
			sm = m.shared[:len(m.shared)+1][len(m.shared)]
		}
		sm.Group, sm.Filter, sm.Nodes = group, n.filter, sm.Nodes[:0]
		for _, c := range members {
			sm.Nodes = append(sm.Nodes, c.node)
		}
		m.shared = append(m.shared, sm)
	}
}
