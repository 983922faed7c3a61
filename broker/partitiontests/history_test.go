package partitiontests

import (
	"context"
	"strings"
	"testing"
	"time"
)

// The checker needs no namespaces: these run everywhere.

func TestCheck(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	pub := func(id, topic string, sent int, o Outcome) Publish {
		return Publish{ID: id, Client: "p", Node: 1, Topic: topic, Sent: at(sent), Done: at(sent + 5), Outcome: o}
	}
	tests := []struct {
		name string
		h    func(h *History)
		// want: missing pairs as "id>client", duplicates, unexpected,
		// delivered though not acked, sessions lost.
		missing                   []string
		dups, unexpected, refused int
		lost                      int
	}{
		{
			name: "acked and delivered",
			h: func(h *History) {
				h.AddSubscription(Subscription{Client: "s1", Filter: "pt/+/1/#", Acked: at(0)})
				h.AddPublish(pub("m1", "pt/1/1/p", 10, Acked))
				h.AddDelivery(Delivery{Client: "s1", ID: "m1", Topic: "pt/1/1/p", At: at(20)})
			},
		},
		{
			name: "acked, not delivered",
			h: func(h *History) {
				h.AddSubscription(Subscription{Client: "s1", Filter: "pt/+/1/#", Acked: at(0)})
				h.AddSubscription(Subscription{Client: "s2", Filter: "pt/#", Acked: at(0)})
				h.AddPublish(pub("m1", "pt/1/1/p", 10, Acked))
				h.AddDelivery(Delivery{Client: "s2", ID: "m1", Topic: "pt/1/1/p", At: at(20)})
			},
			missing: []string{"m1>s1"},
		},
		{
			name: "refused or failed publishes need no delivery, and may have one",
			h: func(h *History) {
				h.AddSubscription(Subscription{Client: "s1", Filter: "pt/#", Acked: at(0)})
				h.AddPublish(pub("m1", "pt/1/1/p", 10, Refused))
				h.AddPublish(pub("m2", "pt/1/1/p", 10, Failed))
				h.AddDelivery(Delivery{Client: "s1", ID: "m2", Topic: "pt/1/1/p", At: at(20)})
			},
			refused: 1,
		},
		{
			name: "subscribed after the publish was sent",
			h: func(h *History) {
				h.AddSubscription(Subscription{Client: "s1", Filter: "pt/#", Acked: at(10)})
				h.AddPublish(pub("m1", "pt/1/1/p", 10, Acked))
				h.AddPublish(pub("m2", "pt/1/1/p", 11, Acked))
			},
			missing: []string{"m2>s1"},
		},
		{
			name: "filter does not match",
			h: func(h *History) {
				h.AddSubscription(Subscription{Client: "s1", Filter: "pt/+/2/#", Acked: at(0)})
				h.AddPublish(pub("m1", "pt/1/1/p", 10, Acked))
			},
		},
		{
			name: "duplicates are counted",
			h: func(h *History) {
				h.AddSubscription(Subscription{Client: "s1", Filter: "pt/#", Acked: at(0)})
				h.AddPublish(pub("m1", "pt/1/1/p", 10, Acked))
				for range 3 {
					h.AddDelivery(Delivery{Client: "s1", ID: "m1", Topic: "pt/1/1/p", At: at(20)})
				}
			},
			dups: 2,
		},
		{
			name: "two matching filters of one client expect one delivery",
			h: func(h *History) {
				h.AddSubscription(Subscription{Client: "s1", Filter: "pt/#", Acked: at(0)})
				h.AddSubscription(Subscription{Client: "s1", Filter: "pt/+/1/#", Acked: at(0)})
				h.AddPublish(pub("m1", "pt/1/1/p", 10, Acked))
				h.AddDelivery(Delivery{Client: "s1", ID: "m1", Topic: "pt/1/1/p", At: at(20)})
			},
		},
		{
			name: "unknown id, wrong topic, unsubscribed client",
			h: func(h *History) {
				h.AddSubscription(Subscription{Client: "s1", Filter: "pt/+/1/#", Acked: at(0)})
				h.AddPublish(pub("m1", "pt/1/1/p", 10, Acked))
				h.AddDelivery(Delivery{Client: "s1", ID: "m1", Topic: "pt/1/1/p", At: at(20)})
				h.AddDelivery(Delivery{Client: "s1", ID: "nope", Topic: "pt/1/1/p", At: at(20)})
				h.AddDelivery(Delivery{Client: "s1", ID: "m1", Topic: "pt/2/1/p", At: at(20)})
				h.AddDelivery(Delivery{Client: "s9", ID: "m1", Topic: "pt/1/1/p", At: at(20)})
			},
			unexpected: 3,
		},
		{
			name: "a lost session ends its subscriptions",
			h: func(h *History) {
				h.AddSubscription(Subscription{Client: "s1", Filter: "pt/#", Acked: at(0)})
				h.AddPublish(pub("m1", "pt/1/1/p", 10, Acked))
				h.AddEvent(Event{At: at(50), Client: "s1", What: EventSessionLost})
				h.EndSubscriptions("s1", at(50))
				h.AddSubscription(Subscription{Client: "s1", Filter: "pt/#", Acked: at(60)})
				h.AddPublish(pub("m2", "pt/1/1/p", 55, Acked)) // between: not expected
				h.AddPublish(pub("m3", "pt/1/1/p", 70, Acked))
				h.AddDelivery(Delivery{Client: "s1", ID: "m3", Topic: "pt/1/1/p", At: at(80)})
			},
			missing: []string{"m1>s1"},
			lost:    1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &History{}
			tt.h(h)
			r := Check(h)
			var missing []string
			for _, p := range r.Missing {
				missing = append(missing, p.Pub.ID+">"+p.Subscriber)
			}
			if strings.Join(missing, ",") != strings.Join(tt.missing, ",") {
				t.Errorf("missing %v, want %v", missing, tt.missing)
			}
			if r.Duplicates != tt.dups || len(r.Unexpected) != tt.unexpected || r.DeliveredRefused != tt.refused || len(r.SessionsLost) != tt.lost {
				t.Errorf("dups %d unexpected %d delivered-refused %d lost %d, want %d %d %d %d",
					r.Duplicates, len(r.Unexpected), r.DeliveredRefused, len(r.SessionsLost), tt.dups, tt.unexpected, tt.refused, tt.lost)
			}
			wantOK := len(tt.missing) == 0 && tt.unexpected == 0 && tt.lost == 0
			if r.OK() != wantOK {
				t.Errorf("OK() = %v, want %v; %s\n%s", r.OK(), wantOK, r.Summary(), r.Problems(5))
			}
		})
	}
}

func TestMatch(t *testing.T) {
	for _, c := range []struct {
		filter, topic string
		want          bool
	}{
		{"pt/#", "pt/1/2/p", true},
		{"pt/+/2/#", "pt/1/2/p", true},
		{"pt/+/2/#", "pt/1/3/p", false},
		{"pt/+/2/#", "pt/1/2", true}, // '#' matches the parent level too
		{"#", "$SYS/x", false},
		{"rt/+", "rt/1", true},
		{"rt/+", "rt/1/x", false},
	} {
		if got := Match(c.filter, c.topic); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.filter, c.topic, got, c.want)
		}
	}
}

func TestReferenceHasKey(t *testing.T) {
	for key, want := range map[string]bool{
		"cluster.allow_publish_during_netsplit": true,
		"cluster.secret_key":                    true,
		"storage.path":                          true,
		"cluster.no_such_key":                   false,
		"path":                                  false, // storage.path is not top level
	} {
		got, err := ReferenceHasKey(key)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("ReferenceHasKey(%q) = %v, want %v", key, got, want)
		}
	}
}

// TestAvailable checks that the probe leaves nothing behind and says
// what is missing when it fails.
func TestAvailable(t *testing.T) {
	err := Available()
	if err != nil {
		t.Skipf("network namespaces unavailable (the message the partition tests skip with): %v", err)
	}
	out, lerr := ipCmd(context.Background(), "netns", "list")
	if lerr != nil {
		t.Fatal(lerr)
	}
	if strings.Contains(out, "-probe-") {
		t.Errorf("the probe left its namespace:\n%s", out)
	}
}
