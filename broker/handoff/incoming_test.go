package handoff

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestIncoming: each message reaches the session once, whichever path
// comes first; the races found in the cluster tests are cases here.
func TestIncoming(t *testing.T) {
	exported := Key{"n1", 1}
	local := Key{"n2", 7} // a publish on the new node itself
	fwd := Key{"n3", 9}   // forwarded by a third node
	will := Key{"n1", 12} // a will, numbered by OnWill on the old node
	unknown := Key{"", 0} // restored from storage: no key
	for _, tc := range []struct {
		name   string
		events string // D:<key> (Direct) or H:<key> (Handed) or U:<key> (Unhand), space separated
		want   string // per event: w/k (Direct: withdraw/keep), d/s (Handed: deliver/skip), - (Unhand)
	}{
		{"a direct copy of an exported message is withdrawn", "D:exported", "w"},
		{"direct first: the handed copy is skipped", "D:fwd H:fwd", "k s"},
		{"handed first: the direct copy is withdrawn", "H:fwd D:fwd", "d w"},
		// Late id (found under load): a publish on the new node whose
		// forward was still waiting for a peer reached the session
		// before its id was noted, so the old node's copy got through
		// too. The id now rides in the delivery itself (the stamp), so
		// Direct knows it at once, in either order.
		{"late id: local publish, handed copy first", "H:local D:local", "d w"},
		{"late id: local publish, direct copy first", "D:local H:local", "k s"},
		// Will during a handoff (found under load): the old node's shadow
		// caught its local delivery of a will while the new node got the
		// forwarded copy, or the other way round; both carry the id
		// OnWill gave the will.
		{"will: forwarded copy first", "D:will H:will", "k s"},
		{"will: caught copy first", "H:will D:will", "d w"},
		{"a retried shipment is not delivered twice", "H:fwd H:fwd", "d s"},
		{"a handed message that could not be queued is delivered on retry", "H:fwd U:fwd H:fwd", "d - d"},
		{"messages without a key are always delivered", "H:unknown D:unknown H:unknown", "d k d"},
		{"other messages are independent", "D:local H:fwd D:will", "k d k"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keys := map[string]Key{"exported": exported, "local": local, "fwd": fwd, "will": will, "unknown": unknown}
			in := NewIncoming(cfg, t0, []Key{exported, unknown})
			var got []string
			for _, ev := range strings.Fields(tc.events) {
				op, name, _ := strings.Cut(ev, ":")
				k := keys[name]
				switch op {
				case "D":
					got = append(got, map[bool]string{true: "w", false: "k"}[in.Direct(k)])
				case "H":
					got = append(got, map[bool]string{true: "d", false: "s"}[in.Handed(k)])
				case "U":
					in.Unhand(k)
					got = append(got, "-")
				}
			}
			if g := strings.Join(got, " "); g != tc.want {
				t.Fatalf("%s: got %s, want %s", tc.events, g, tc.want)
			}
		})
	}
}

func TestIncomingExpires(t *testing.T) {
	in := NewIncoming(cfg, t0, nil)
	if life := cfg.Lifetime(); life != 5*time.Second {
		t.Fatalf("Lifetime = %v, want register + (grace factor + 2) x forward = 5s", life)
	}
	if in.Expired(t0.Add(cfg.Lifetime() - time.Nanosecond)) {
		t.Error("expired before its lifetime")
	}
	if !in.Expired(t0.Add(cfg.Lifetime())) {
		t.Error("not expired after its lifetime")
	}
	// A heal's tracking is extended while the split lasts; an earlier
	// time never shortens it.
	in.Extend(t0.Add(time.Minute))
	in.Extend(t0.Add(time.Second))
	if in.Expired(t0.Add(time.Minute-time.Nanosecond)) || !in.Expired(t0.Add(time.Minute)) {
		t.Error("Extend did not move the expiry to exactly the latest time given")
	}
}

// TestIncomingOverflow: beyond MaxTracked keys a set stops growing (a
// duplicate becomes possible), reported once.
func TestIncomingOverflow(t *testing.T) {
	in := NewIncoming(cfg, t0, nil)
	for i := range MaxTracked {
		in.Handed(Key{"n1", uint64(i + 1)})
	}
	if in.Overflowed() {
		t.Fatal("overflow reported at the limit")
	}
	extra := Key{"n1", MaxTracked + 1}
	if !in.Handed(extra) {
		t.Fatal("a message beyond the limit was not delivered")
	}
	if !in.Overflowed() || in.Overflowed() {
		t.Fatal("overflow not reported exactly once")
	}
	if in.Direct(extra) {
		t.Fatal("an untracked key was withdrawn")
	}
	if got := fmt.Sprint(len(in.handed)); got != fmt.Sprint(MaxTracked) {
		t.Fatalf("handed set holds %s keys", got)
	}
}
