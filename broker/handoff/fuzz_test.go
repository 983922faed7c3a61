package handoff

import (
	"errors"
	"testing"
	"time"
)

// FuzzShadow drives a shadow with an arbitrary sequence of inputs (each
// byte: the input in its low 3 bits, the time since the last one in
// 50 ms steps in the rest) and checks what a driver relies on: at most
// one shipment at a time, Next never in the past of a pending timer, and,
// once the clock runs out with every shipment succeeding, the shadow
// ends with each caught message handed over, shipped or discarded exactly
// once (or refused after the end).
func FuzzShadow(f *testing.F) {
	f.Add([]byte{0, 8, 1, 16, 2, 3, 4})
	f.Add([]byte{0, 0, 0, 3, 4, 3, 4, 1, 2})
	f.Add([]byte{0, 5, 0, 6, 0, 7})
	f.Add([]byte{0, 255, 3, 255, 4, 255, 2})
	f.Fuzz(func(t *testing.T, in []byte) {
		s := NewShadow[int](cfg, t0)
		now := t0
		caught, handed, shipped, discarded, refused := 0, 0, 0, 0, 0
		var inFlight []int
		seen := map[int]int{}
		drain := func() {
			r := s.Ready()
			if len(r.Ship) > 0 {
				if inFlight != nil {
					t.Fatal("a second shipment while one is under way")
				}
				inFlight = r.Ship
			}
			discarded += r.Discarded
		}
		done := func(err error) {
			// After Stop, a shipment's outcome is ignored: Stop
			// counted it as discarded.
			if inFlight != nil && err == nil && s.Phase() != Ended {
				shipped += len(inFlight)
				for _, m := range inFlight {
					seen[m]++
				}
			}
			inFlight = nil
			s.Shipped(now, err)
		}
		for _, b := range in {
			now = now.Add(time.Duration(b>>3) * 50 * time.Millisecond)
			switch b & 7 {
			case 0:
				caught++
				if !s.Catch(now, caught) {
					refused++
				}
			case 1:
				for _, m := range s.Finish(now) {
					handed++
					seen[m]++
				}
			case 2:
				s.Tick(now)
			case 3:
				done(nil)
			case 4:
				done(errors.New("unreachable"))
			case 5:
				s.ClientBack(now)
			case 6:
				if b>>3 == 31 { // rarely: the node stops
					s.Stop("node stopping")
				} else {
					s.Tick(now)
				}
			case 7:
				caught++
				if !s.Catch(now, caught) { // a pass: same as a catch
					refused++
				}
			}
			drain()
		}
		for i := 0; s.Phase() != Ended; i++ {
			if i == 1000 {
				t.Fatal("the shadow does not end")
			}
			switch n := s.Next(); {
			case inFlight != nil:
				done(nil)
			case !n.IsZero():
				if n.After(now) {
					now = n
				}
				s.Tick(now)
			default:
				t.Fatalf("no timer and no shipment, yet %v", s.Phase())
			}
			drain()
		}
		for m, n := range seen {
			if n > 1 {
				t.Fatalf("message %d handed over or shipped %d times", m, n)
			}
		}
		if handed+shipped+discarded+refused != caught {
			t.Fatalf("%d caught: %d handed, %d shipped, %d discarded, %d refused", caught, handed, shipped, discarded, refused)
		}
	})
}

// FuzzIncoming drives an Incoming over a small key space (each byte: the
// operation in its low 2 bits, the key in the rest) the way the driver
// does (Unhand only right after a Handed that delivered) and checks that
// no message reaches the session twice.
func FuzzIncoming(f *testing.F) {
	f.Add([]byte{0, 1, 4, 5, 9, 8})
	f.Add([]byte{1, 2, 1, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		exported := Key{"n1", 1}
		inc := NewIncoming(cfg, t0, []Key{exported})
		got := map[Key]int{exported: 1}
		direct := map[Key]bool{} // mochi delivers a publish to a session once
		var last Key
		lastDelivered := false
		for _, b := range in {
			k := Key{"n1", uint64(b>>2) % 8}
			if b>>2%8 == 7 {
				k = Key{} // unknown: no de-duplication
			}
			switch b & 3 {
			case 0: // direct
				if direct[k] && k.Known() {
					continue
				}
				direct[k] = true
				if !inc.Direct(k) {
					got[k]++
				}
				lastDelivered = false
			case 1, 3: // handed
				lastDelivered = inc.Handed(k)
				if lastDelivered {
					got[k]++
				}
				last = k
			case 2: // the last handed one could not be queued
				if lastDelivered {
					inc.Unhand(last)
					got[last]--
					lastDelivered = false
				}
			}
		}
		for k, n := range got {
			if k.Known() && n > 1 {
				t.Fatalf("%v reached the session %d times", k, n)
			}
		}
	})
}
