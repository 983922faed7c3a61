package handoff

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// cfg: pending 2 s, grace 2 s, last shipments 1 s.
var cfg = Config{RegisterTimeout: time.Second, ForwardTimeout: time.Second}

var t0 = time.Unix(1000, 0)

func at(d time.Duration) time.Time { return t0.Add(d) }

const ms = time.Millisecond

// step is one input to a shadow at a time (ms after the export) and what
// must come out of it.
type step struct {
	at   time.Duration
	do   string // catch:<m> finish tick ok fail back stop
	want string // expected outputs, space separated (see outputs)
}

// outputs renders what one step produced: handed:<a,b> (Finish's answer),
// ship:<a,b>@<ms> (Ready.Ship and ShipBy), discarded:<n>, timedout,
// ended:<reason>/<shipped>/<discarded>, refused (Catch returned false),
// phase:<p> and next:<ms>.
func outputs(s *Shadow[string], handed []string, accepted bool) string {
	var out []string
	if handed != nil {
		out = append(out, "handed:"+strings.Join(handed, ","))
	}
	if !accepted {
		out = append(out, "refused")
	}
	r := s.Ready()
	if len(r.Ship) > 0 {
		out = append(out, "ship:"+strings.Join(r.Ship, ",")+"@"+r.ShipBy.Sub(t0).String())
	}
	if r.Discarded > 0 {
		out = append(out, "discarded:"+itoa(r.Discarded))
	}
	if r.TimedOut {
		out = append(out, "timedout")
	}
	if r.Ended {
		out = append(out, "ended:"+r.Reason+"/"+itoa(r.TotalShipped)+"/"+itoa(r.TotalDiscarded))
	}
	out = append(out, "phase:"+s.Phase().String())
	if n := s.Next(); !n.IsZero() {
		out = append(out, "next:"+n.Sub(t0).String())
	}
	return strings.Join(out, " ")
}

func itoa(n int) string { return strconv.Itoa(n) }

func run(t *testing.T, steps []step) {
	t.Helper()
	s := NewShadow[string](cfg, t0)
	for i, st := range steps {
		now := at(st.at)
		var handed []string
		accepted := true
		switch cmd, arg, _ := strings.Cut(st.do, ":"); cmd {
		case "catch":
			accepted = s.Catch(now, arg)
		case "finish":
			handed = s.Finish(now)
			if handed == nil {
				handed = []string{}
			}
		case "tick":
			s.Tick(now)
		case "ok":
			s.Shipped(now, nil)
		case "fail":
			s.Shipped(now, errors.New("unreachable"))
		case "back":
			s.ClientBack(now)
		case "stop":
			s.Stop("node stopping")
		default:
			t.Fatalf("step %d: unknown input %q", i, st.do)
		}
		if got := outputs(s, handed, accepted); got != st.want {
			t.Fatalf("step %d (%s at %v):\n got  %s\n want %s", i, st.do, st.at, got, st.want)
		}
	}
}

// TestShadowPhases walks a shadow through each phase and each way out.
func TestShadowPhases(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"caught while pending goes in the answer; nothing after: ends at the grace's end", []step{
			{0, "catch:a", "phase:pending next:2s"},
			{500 * ms, "catch:b", "phase:pending next:2s"},
			{time.Second, "finish", "handed:a,b phase:forwarding next:3s"},
			{3 * time.Second, "tick", "ended:handed off/2/0 phase:ended"},
			{3 * time.Second, "catch:late", "refused phase:ended"},
		}},
		{"stragglers are shipped one batch at a time, in order", []step{
			{time.Second, "finish", "handed: phase:forwarding next:3s"},
			{1500 * ms, "catch:c", "ship:c@3.5s phase:forwarding next:3s"},
			{1600 * ms, "catch:d", "phase:forwarding next:3s"},
			{1700 * ms, "catch:e", "phase:forwarding next:3s"},
			{1800 * ms, "ok", "ship:d,e@3.8s phase:forwarding next:3s"},
			{1900 * ms, "ok", "phase:forwarding next:3s"},
			{3 * time.Second, "tick", "ended:handed off/3/0 phase:ended"},
		}},
		{"a failed shipment is retried with what was caught meanwhile", []step{
			{time.Second, "finish", "handed: phase:forwarding next:3s"},
			{1200 * ms, "catch:c", "ship:c@3.2s phase:forwarding next:3s"},
			{1300 * ms, "fail", "phase:forwarding next:1.4s"},
			{1350 * ms, "catch:d", "phase:forwarding next:1.4s"},
			{1400 * ms, "tick", "ship:c,d@3.2s phase:forwarding next:3s"},
			{1500 * ms, "ok", "phase:forwarding next:3s"},
			{3 * time.Second, "tick", "ended:handed off/2/0 phase:ended"},
		}},
		{"a shipment failing past its deadline is discarded and counted", []step{
			{0, "finish", "handed: phase:forwarding next:2s"},
			{100 * ms, "catch:c", "ship:c@2.1s phase:forwarding next:2s"},
			{2100 * ms, "fail", "discarded:1 phase:forwarding next:2s"},
			{2200 * ms, "tick", "ended:handed off/0/1 phase:ended"},
		}},
		{"pending times out: ship what was caught, a late finish hands over the rest", []step{
			{500 * ms, "catch:a", "phase:pending next:2s"},
			{2 * time.Second, "tick", "ship:a@4s timedout phase:forwarding next:4s"},
			{2050 * ms, "catch:b", "phase:forwarding next:4s"},
			{2100 * ms, "ok", "ship:b@4.1s phase:forwarding next:4s"},
			{2200 * ms, "finish", "handed: phase:forwarding next:4s"},
			{2300 * ms, "ok", "phase:forwarding next:4s"},
			{4 * time.Second, "tick", "ended:handed off/2/0 phase:ended"},
		}},
		{"a late finish takes a shipment waiting for its retry", []step{
			{500 * ms, "catch:a", "phase:pending next:2s"},
			{2 * time.Second, "tick", "ship:a@4s timedout phase:forwarding next:4s"},
			{2100 * ms, "fail", "phase:forwarding next:2.2s"},
			{2150 * ms, "catch:b", "phase:forwarding next:2.2s"},
			{2180 * ms, "finish", "handed:a,b phase:forwarding next:4s"},
			{2200 * ms, "tick", "phase:forwarding next:4s"},
			{4 * time.Second, "tick", "ended:handed off/2/0 phase:ended"},
		}},
		{"the grace ends during a shipment: the shadow ends when it is done", []step{
			{0, "finish", "handed: phase:forwarding next:2s"},
			{1900 * ms, "catch:c", "ship:c@3.9s phase:forwarding next:2s"},
			{2 * time.Second, "tick", "phase:forwarding"},
			{2500 * ms, "fail", "phase:forwarding next:2.6s"},
			{2600 * ms, "tick", "ship:c@3s phase:forwarding"},
			{2700 * ms, "ok", "ended:handed off/1/0 phase:ended"},
		}},
		{"the last shipment fails at the grace's last second: discarded", []step{
			{0, "finish", "handed: phase:forwarding next:2s"},
			{1 * time.Second, "catch:c", "ship:c@3s phase:forwarding next:2s"},
			{2 * time.Second, "tick", "phase:forwarding"},
			{3 * time.Second, "fail", "discarded:1 ended:handed off/0/1 phase:ended"},
		}},
		{"the client comes back while pending: ship what was caught, then end", []step{
			{500 * ms, "catch:a", "phase:pending next:2s"},
			{time.Second, "back", "ship:a@2s phase:forwarding"},
			{1100 * ms, "catch:b", "phase:forwarding"},
			{1200 * ms, "ok", "ship:b@2s phase:forwarding"},
			{1300 * ms, "ok", "ended:client came back/2/0 phase:ended"},
		}},
		{"the client comes back with nothing caught: ended at once", []step{
			{time.Second, "back", "ended:client came back/0/0 phase:ended"},
			{time.Second, "finish", "handed: phase:ended"},
		}},
		{"the node stops: what is held is discarded", []step{
			{0, "catch:a", "phase:pending next:2s"},
			{0, "catch:b", "phase:pending next:2s"},
			{time.Second, "stop", "discarded:2 ended:node stopping/0/2 phase:ended"},
			{time.Second, "stop", "phase:ended"},
			{time.Second, "tick", "phase:ended"},
		}},
		{"stale shipment outcomes are ignored", []step{
			{0, "ok", "phase:pending next:2s"},
			{0, "fail", "phase:pending next:2s"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { run(t, tc.steps) })
	}
}

// TestShadowHandsEachMessageOnce: whatever the order of catches, answers,
// shipment outcomes and ticks, every caught message is handed over,
// shipped or discarded exactly once (or refused, once the shadow has
// ended), and the shadow ends. Exhaustive over
// every interleaving of four catches with a fixed sequence of other
// inputs, 300 ms apart.
func TestShadowHandsEachMessageOnce(t *testing.T) {
	others := []string{"finish", "fail", "tick", "ok", "tick", "fail"}
	const catches = 4
	total := len(others) + catches
	runs := 0
	var rec func(pos, placed int, mask []bool)
	rec = func(pos, placed int, mask []bool) {
		if placed == catches {
			runs++
			checkInterleaving(t, others, mask)
			return
		}
		for p := pos; p < total; p++ {
			mask[p] = true
			rec(p+1, placed+1, mask)
			mask[p] = false
		}
	}
	rec(0, 0, make([]bool, total))
	if runs != 210 { // 10 choose 4
		t.Fatalf("%d interleavings ran", runs)
	}
}

func checkInterleaving(t *testing.T, others []string, catchAt []bool) {
	t.Helper()
	s := NewShadow[string](cfg, t0)
	now := t0
	var script, handed, shipped, inFlight []string
	discarded, refused := 0, 0
	drain := func() {
		r := s.Ready()
		if len(r.Ship) > 0 {
			if inFlight != nil {
				t.Fatalf("%v: a second shipment while one is under way", script)
			}
			inFlight = r.Ship
		}
		discarded += r.Discarded
	}
	shipDone := func(err error) {
		if inFlight != nil && err == nil {
			shipped = append(shipped, inFlight...)
		}
		inFlight = nil
		s.Shipped(now, err)
	}
	caught, oi := 0, 0
	for _, isCatch := range catchAt {
		now = now.Add(300 * ms)
		if isCatch {
			m := "c" + strconv.Itoa(caught)
			caught++
			script = append(script, m)
			if !s.Catch(now, m) {
				refused++ // after the end: the driver's to count
			}
		} else {
			in := others[oi]
			oi++
			script = append(script, in)
			switch in {
			case "finish":
				handed = append(handed, s.Finish(now)...)
			case "tick":
				s.Tick(now)
			case "ok":
				shipDone(nil)
			case "fail":
				shipDone(errors.New("unreachable"))
			}
		}
		drain()
	}
	// Run the clock out; every shipment succeeds from here.
	for i := 0; s.Phase() != Ended; i++ {
		if i == 100 {
			t.Fatalf("%v: the shadow does not end", script)
		}
		if inFlight != nil {
			shipDone(nil)
		} else if n := s.Next(); !n.IsZero() {
			now = n
			s.Tick(now)
		} else {
			t.Fatalf("%v: no timer and no shipment, yet not ended (phase %v)", script, s.Phase())
		}
		drain()
	}
	got := slices.Concat(handed, shipped)
	slices.Sort(got)
	if len(got) != len(slices.Compact(slices.Clone(got))) || len(got)+discarded+refused != caught {
		t.Fatalf("%v: handed %v, shipped %v, %d discarded, %d refused: want each of %d messages once",
			script, handed, shipped, discarded, refused, caught)
	}
}
