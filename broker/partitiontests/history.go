package partitiontests

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Outcome is what a publisher learned about one QoS 1 PUBLISH.
type Outcome uint8

const (
	// Acked: a PUBACK with a success reason code (< 0x80).
	Acked Outcome = iota
	// Refused: a PUBACK with an error reason code (Code).
	Refused
	// Failed: no PUBACK (timeout, connection lost, not connected).
	Failed
)

func (o Outcome) String() string {
	switch o {
	case Acked:
		return "acked"
	case Refused:
		return "refused"
	}
	return "failed"
}

// Publish is one recorded PUBLISH.
type Publish struct {
	ID     string // unique, carried as the payload
	Client string
	Node   int // the node the publisher was connected to
	Topic  string
	Retain bool
	// Sent is when the client started sending it, Done when the
	// outcome was known.
	Sent, Done time.Time
	Outcome    Outcome
	Code       byte   // the PUBACK reason code (Acked, Refused)
	Err        string // Failed: why
}

// Subscription is one subscription a subscriber holds from Acked (its
// SUBACK granted it) until Ended (zero: still held). A persistent session
// found gone at a reconnect ends its subscriptions at that moment.
type Subscription struct {
	Client string
	Node   int
	Filter string
	Acked  time.Time
	Ended  time.Time
}

// Delivery is one PUBLISH a subscriber received.
type Delivery struct {
	Client string
	ID     string // the payload
	Topic  string
	At     time.Time
}

// Event is something else the checker reports: a persistent session found
// gone at a reconnect, a client refused, ...
type Event struct {
	At     time.Time
	Client string
	Node   int
	What   string
}

// History records what every client saw. Methods are safe for concurrent
// use.
type History struct {
	mu     sync.Mutex
	pubs   []Publish
	subs   []Subscription
	dels   []Delivery
	events []Event
}

// AddPublish records a publish whose outcome is known.
func (h *History) AddPublish(p Publish) {
	h.mu.Lock()
	h.pubs = append(h.pubs, p)
	h.mu.Unlock()
}

// AddSubscription records a granted subscription.
func (h *History) AddSubscription(s Subscription) {
	h.mu.Lock()
	h.subs = append(h.subs, s)
	h.mu.Unlock()
}

// EndSubscriptions ends every held subscription of client at t (its
// session was gone at a reconnect).
func (h *History) EndSubscriptions(client string, t time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range h.subs {
		if h.subs[i].Client == client && h.subs[i].Ended.IsZero() {
			h.subs[i].Ended = t
		}
	}
}

// AddDelivery records a received message.
func (h *History) AddDelivery(d Delivery) {
	h.mu.Lock()
	h.dels = append(h.dels, d)
	h.mu.Unlock()
}

// AddEvent records an event.
func (h *History) AddEvent(e Event) {
	h.mu.Lock()
	h.events = append(h.events, e)
	h.mu.Unlock()
}

// Snapshot copies the history.
func (h *History) Snapshot() (pubs []Publish, subs []Subscription, dels []Delivery, events []Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.pubs), slices.Clone(h.subs), slices.Clone(h.dels), slices.Clone(h.events)
}

// Counts returns how many publishes had each outcome.
func (h *History) Counts() (acked, refused, failed int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range h.pubs {
		switch p.Outcome {
		case Acked:
			acked++
		case Refused:
			refused++
		default:
			failed++
		}
	}
	return acked, refused, failed
}

// Pair is a (message, subscriber) pair the checker expected delivered.
type Pair struct {
	Pub        Publish
	Subscriber string
	SubNode    int
	Filter     string
}

func (p Pair) String() string {
	return fmt.Sprintf("%s (from %s on n%d, %s, sent %s) -> %s on n%d (%s)", p.Pub.ID, p.Pub.Client, p.Pub.Node,
		p.Pub.Topic, p.Pub.Sent.Format("15:04:05.000"), p.Subscriber, p.SubNode, p.Filter)
}

// Report is the checker's verdict on a history.
type Report struct {
	Acked, Refused, Failed int
	// Codes counts the refusals by reason code.
	Codes map[byte]int
	// Expected counts the (message, subscriber) pairs that must be
	// delivered; Missing lists those that were not.
	Expected int
	Missing  []Pair
	// Duplicates counts deliveries of a pair beyond the first (allowed
	// for QoS 1), in DuplicatePairs pairs.
	Duplicates, DuplicatePairs int
	// Unexpected lists deliveries of a message never published, or to
	// a subscriber with no subscription matching its topic.
	Unexpected []Delivery
	// DeliveredRefused counts deliveries of messages whose publisher got
	// no success ack (allowed: an error ack after a partial delivery).
	DeliveredRefused int
	// SessionsLost lists persistent sessions found gone at a reconnect.
	SessionsLost []Event
}

// Check checks a history: every PUBLISH acknowledged with success was
// delivered to every subscriber that held a matching subscription when it
// was sent (SUBACK received before the publish was sent, and not ended
// before); nothing was delivered that was not published to a matching
// subscription; and no persistent session was lost. Duplicates are
// counted, not failures.
//
// The rule takes the SUBACK as the moment a subscription exists
// everywhere. Routes replicate asynchronously, so a workload that
// subscribes while publishers run must wait for the routes to converge
// before it counts on a subscription (Workload subscribes before
// publishing starts and waits for every node's routes).
func Check(h *History) Report {
	pubs, subs, dels, events := h.Snapshot()
	r := Report{Codes: map[byte]int{}}
	byID := make(map[string]*Publish, len(pubs))
	for i := range pubs {
		p := &pubs[i]
		byID[p.ID] = p
		switch p.Outcome {
		case Acked:
			r.Acked++
		case Refused:
			r.Refused++
			r.Codes[p.Code]++
		default:
			r.Failed++
		}
	}
	subsOf := map[string][]Subscription{}
	for _, s := range subs {
		subsOf[s.Client] = append(subsOf[s.Client], s)
	}
	type key struct{ client, id string }
	got := make(map[key]int, len(dels))
	for _, d := range dels {
		p, ok := byID[d.ID]
		if !ok || p.Topic != d.Topic || !slices.ContainsFunc(subsOf[d.Client], func(s Subscription) bool { return Match(s.Filter, d.Topic) }) {
			r.Unexpected = append(r.Unexpected, d)
			continue
		}
		if p.Outcome != Acked {
			r.DeliveredRefused++
		}
		got[key{d.Client, d.ID}]++
	}
	for _, n := range got {
		if n > 1 {
			r.Duplicates += n - 1
			r.DuplicatePairs++
		}
	}
	clients := make([]string, 0, len(subsOf))
	for c := range subsOf {
		clients = append(clients, c)
	}
	slices.Sort(clients)
	for i := range pubs {
		p := &pubs[i]
		if p.Outcome != Acked {
			continue
		}
		for _, c := range clients {
			for _, s := range subsOf[c] {
				if !s.Acked.Before(p.Sent) || (!s.Ended.IsZero() && !s.Ended.After(p.Sent)) || !Match(s.Filter, p.Topic) {
					continue
				}
				r.Expected++
				if got[key{c, p.ID}] == 0 {
					r.Missing = append(r.Missing, Pair{Pub: *p, Subscriber: c, SubNode: s.Node, Filter: s.Filter})
				}
				break // one delivery per client, however many of its filters match
			}
		}
	}
	slices.SortFunc(r.Missing, func(a, b Pair) int { return a.Pub.Sent.Compare(b.Pub.Sent) })
	for _, e := range events {
		if e.What == EventSessionLost {
			r.SessionsLost = append(r.SessionsLost, e)
		}
	}
	return r
}

// EventSessionLost is the What of an Event recording a persistent session
// that was gone when its client reconnected (CONNACK session present =
// false).
const EventSessionLost = "session lost"

// OK reports whether the history passed.
func (r Report) OK() bool {
	return len(r.Missing) == 0 && len(r.Unexpected) == 0 && len(r.SessionsLost) == 0
}

// Summary is one line of counts.
func (r Report) Summary() string {
	codes := make([]string, 0, len(r.Codes))
	for c, n := range r.Codes {
		codes = append(codes, fmt.Sprintf("0x%02x:%d", c, n))
	}
	slices.Sort(codes)
	return fmt.Sprintf("publishes acked %d, refused %d %v, failed %d; expected deliveries %d, missing %d; duplicates %d in %d pairs; delivered though not acked %d; unexpected %d; sessions lost %d",
		r.Acked, r.Refused, codes, r.Failed, r.Expected, len(r.Missing), r.Duplicates, r.DuplicatePairs, r.DeliveredRefused, len(r.Unexpected), len(r.SessionsLost))
}

// Problems describes what failed, at most limit items of each kind.
func (r Report) Problems(limit int) string {
	var b strings.Builder
	if len(r.Missing) > 0 {
		fmt.Fprintf(&b, "%d acknowledged (message, subscriber) pairs never delivered:\n", len(r.Missing))
		for i, p := range r.Missing {
			if i == limit {
				fmt.Fprintf(&b, "  ... and %d more\n", len(r.Missing)-limit)
				break
			}
			fmt.Fprintf(&b, "  %s\n", p)
		}
	}
	if len(r.Unexpected) > 0 {
		fmt.Fprintf(&b, "%d unexpected deliveries:\n", len(r.Unexpected))
		for i, d := range r.Unexpected {
			if i == limit {
				fmt.Fprintf(&b, "  ... and %d more\n", len(r.Unexpected)-limit)
				break
			}
			fmt.Fprintf(&b, "  %q on %s to %s at %s\n", d.ID, d.Topic, d.Client, d.At.Format("15:04:05.000"))
		}
	}
	for _, e := range r.SessionsLost {
		fmt.Fprintf(&b, "persistent session of %s on n%d gone at its reconnect at %s\n", e.Client, e.Node, e.At.Format("15:04:05.000"))
	}
	return b.String()
}

// Match reports whether an MQTT topic filter matches a topic name
// (no shared subscriptions; '$' topics are not matched by a leading
// wildcard [MQTT-4.7.2-1]).
func Match(filter, topic string) bool {
	fl, tl := strings.Split(filter, "/"), strings.Split(topic, "/")
	if strings.HasPrefix(topic, "$") && (fl[0] == "+" || fl[0] == "#") {
		return false
	}
	for i, f := range fl {
		if f == "#" {
			return true
		}
		if i >= len(tl) || (f != "+" && f != tl[i]) {
			return false
		}
	}
	return len(fl) == len(tl)
}
