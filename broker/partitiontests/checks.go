package partitiontests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/mendmq/mendmq/broker"
	"github.com/mendmq/mendmq/cluster/netsplit"
)

// pollEvery is how often the detection and heal watchers read a node's
// status: the resolution of the measured times.
const pollEvery = 20 * time.Millisecond

func names(us []netsplit.Unreachable) []string {
	out := make([]string, 0, len(us))
	for _, u := range us {
		out = append(out, u.Name)
	}
	return out
}

// Detection is how long one node took to report a cut.
type Detection struct {
	Node string
	// Peers are the members the node had to find unreachable.
	Peers []string
	// After is the time from the cut to the first status listing every
	// peer of Peers as unreachable; Missed is set if that did not happen
	// within the bound.
	After  time.Duration
	Missed bool
	// Reasons are the detector's reasons for the peers ("dead", "link
	// down", ...).
	Reasons []string
}

func (d Detection) String() string {
	if d.Missed {
		return fmt.Sprintf("%s: %v not reported", d.Node, d.Peers)
	}
	return fmt.Sprintf("%s: %v after %v (%s)", d.Node, d.Peers, d.After.Round(time.Millisecond), strings.Join(d.Reasons, ","))
}

// AwaitDetection polls every node in want (node index -> the node
// indexes it should find unreachable) from start until its status reports
// a netsplit with all of them unreachable, or within passes. Nodes are
// watched concurrently.
func (c *Cluster) AwaitDetection(start time.Time, want map[int][]int, within time.Duration) []Detection {
	keys := slices.Sorted(maps.Keys(want))
	out := make([]Detection, len(keys))
	var wg sync.WaitGroup
	for k, i := range keys {
		n := c.Nodes[i-1]
		peers := make([]string, 0, len(want[i]))
		for _, j := range want[i] {
			peers = append(peers, c.Nodes[j-1].Name)
		}
		out[k] = Detection{Node: n.Name, Peers: peers}
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := &out[k]
			deadline := start.Add(within)
			for {
				st, err := c.Status(n)
				now := time.Now()
				if err == nil && st.Netsplit.Split {
					reasons := map[string]string{}
					for _, u := range st.Netsplit.Unreachable {
						reasons[u.Name] = u.Reason
					}
					all := true
					for _, p := range peers {
						if _, ok := reasons[p]; !ok {
							all = false
						}
					}
					if all {
						d.After = now.Sub(start)
						for _, p := range peers {
							d.Reasons = append(d.Reasons, reasons[p])
						}
						return
					}
				}
				if now.After(deadline) {
					d.Missed = true
					return
				}
				time.Sleep(pollEvery)
			}
		}()
	}
	wg.Wait()
	return out
}

// AwaitFormed waits until Formed holds, up to within, and returns how
// long that took from start.
func (c *Cluster) AwaitFormed(start time.Time, within time.Duration) (time.Duration, error) {
	if d, ok := until(within, c.Formed); !ok {
		return 0, fmt.Errorf("the cluster did not re-form within %v: %s", within, d)
	}
	return time.Since(start), nil
}

// CheckSessions checks, within a bound, that no client id is connected
// on two nodes, that every node's session table places each id of ids on
// the same node (or none), and that each id of pinned lives on its node.
func (c *Cluster) CheckSessions(ids []string, pinned map[string]string, within time.Duration) error {
	detail, ok := until(within, func() (bool, string) {
		where := map[string][]string{}
		for _, n := range c.Nodes {
			l, err := c.Sessions(n, "connected")
			if err != nil {
				return false, err.Error()
			}
			for _, s := range l.Sessions {
				where[s.ClientID] = append(where[s.ClientID], n.Name)
			}
		}
		var problems []string
		for _, id := range slices.Sorted(maps.Keys(where)) {
			if len(where[id]) > 1 {
				problems = append(problems, fmt.Sprintf("%s connected on %v", id, where[id]))
			}
		}
		for _, id := range ids {
			var answers []string
			for _, n := range c.Nodes {
				owner, err := c.SessionNode(n, id)
				if err != nil {
					return false, err.Error()
				}
				answers = append(answers, n.Name+"->"+orNone(owner))
			}
			owners := map[string]bool{}
			for _, a := range answers {
				_, o, _ := strings.Cut(a, "->")
				owners[o] = true
			}
			if len(owners) > 1 {
				problems = append(problems, fmt.Sprintf("session tables disagree on %s: %v", id, answers))
				continue
			}
			if want, ok := pinned[id]; ok && !owners[want] {
				problems = append(problems, fmt.Sprintf("%s lives on %v, its client uses %s", id, answers, want))
			}
		}
		return len(problems) == 0, strings.Join(problems, "; ")
	})
	if !ok {
		return fmt.Errorf("sessions after %v: %s", within, detail)
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// CheckTables checks, within a bound, that every node's replicated
// tables agree: session and retained counts and subscriptions per node
// in GET /api/v1/cluster, and the retained messages under filter (topic
// and payload) in GET /api/v1/retained. It returns the retained messages
// (topic -> payload) they agree on.
func (c *Cluster) CheckTables(filter string, within time.Duration) (map[string]string, error) {
	var agreed map[string]string
	detail, ok := until(within, func() (bool, string) {
		sts, err := c.Statuses()
		if err != nil {
			return false, err.Error()
		}
		var problems []string
		ref := sts[0]
		for _, st := range sts[1:] {
			if st.Sessions != ref.Sessions || st.Retained != ref.Retained {
				problems = append(problems, fmt.Sprintf("%s: sessions %d retained %d, %s: sessions %d retained %d",
					ref.Node, ref.Sessions, ref.Retained, st.Node, st.Sessions, st.Retained))
			}
			a, b := maps.Clone(ref.Subscriptions), maps.Clone(st.Subscriptions)
			maps.DeleteFunc(a, func(_ string, v int) bool { return v == 0 })
			maps.DeleteFunc(b, func(_ string, v int) bool { return v == 0 })
			if !maps.Equal(a, b) {
				problems = append(problems, fmt.Sprintf("subscriptions: %s %v, %s %v", ref.Node, a, st.Node, b))
			}
		}
		var first map[string]string
		for i, n := range c.Nodes {
			l, err := c.Retained(n, filter)
			if err != nil {
				return false, err.Error()
			}
			if l.Truncated {
				return false, n.Name + ": retained list truncated"
			}
			got := map[string]string{}
			for _, m := range l.Messages {
				p := "<binary>"
				if m.Payload != nil {
					p = *m.Payload
				}
				got[m.Topic] = p
			}
			if i == 0 {
				first = got
			} else if !maps.Equal(first, got) {
				problems = append(problems, fmt.Sprintf("retained %s: %s %v, %s %v", filter, c.Nodes[0].Name, sortedMap(first), n.Name, sortedMap(got)))
			}
		}
		agreed = first
		return len(problems) == 0, strings.Join(problems, "; ")
	})
	if !ok {
		return nil, fmt.Errorf("tables after %v: %s", within, detail)
	}
	return agreed, nil
}

func sortedMap(m map[string]string) string {
	keys := slices.Sorted(maps.Keys(m))
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+m[k])
	}
	return "{" + strings.Join(parts, " ") + "}"
}

// CheckHealth checks that every node still runs and that no log tells of
// a panic.
func (c *Cluster) CheckHealth() error {
	var problems []string
	for _, n := range c.Nodes {
		if !n.Alive() {
			problems = append(problems, fmt.Sprintf("%s exited: %v", n.Name, n.ExitErr()))
		}
		lines, err := n.LogProblems()
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: read log: %v", n.Name, err))
		}
		for _, l := range lines {
			problems = append(problems, fmt.Sprintf("%s log: %s", n.Name, l))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "\n"))
	}
	return nil
}

// Median returns the median of ds (0 for none).
func Median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// PutMap writes key of map name through node n's admin API
// (PUT /api/v1/maps/{map}/{key}).
func (c *Cluster) PutMap(n *Node, name, key, value string) error {
	body, _ := json.Marshal(map[string]string{"value": value})
	url := fmt.Sprintf("http://%s:%d/api/v1/maps/%s/%s", n.Addr, AdminPort, name, key)
	req, err := http.NewRequest(http.MethodPut, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("PUT map %s key %s on %s: %w", name, key, n.Name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("PUT map %s key %s on %s: %d %s", name, key, n.Name, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return nil
}

// CheckMap checks, within a bound, that every node reads want (key ->
// value) from map name.
func (c *Cluster) CheckMap(name string, want map[string]string, within time.Duration) error {
	detail, ok := until(within, func() (bool, string) {
		var problems []string
		for _, n := range c.Nodes {
			for key, v := range want {
				var e broker.MapEntry
				if err := c.GetJSON(n, fmt.Sprintf("/api/v1/maps/%s/%s", name, key), &e); err != nil {
					problems = append(problems, err.Error())
					continue
				}
				if e.Value != v {
					problems = append(problems, fmt.Sprintf("%s: %s/%s = %q, want %q", n.Name, name, key, e.Value, v))
				}
			}
		}
		slices.Sort(problems)
		return len(problems) == 0, strings.Join(problems[:min(len(problems), 5)], "; ")
	})
	if !ok {
		return fmt.Errorf("map %s after %v: %s", name, within, detail)
	}
	return nil
}
