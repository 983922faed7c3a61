package auth

import (
	"strings"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/crypto/bcrypt"
)

func TestParseAccess(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Access
		ok   bool
	}{
		{"read", Read, true},
		{"write", Write, true},
		{"readwrite", ReadWrite, true},
		{"deny", Deny, true},
		{"Read", Deny, false},
		{"", Deny, false},
		{"rw", Deny, false},
	} {
		got, err := ParseAccess(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseAccess(%q) = %v, %v; want %v, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestCovers(t *testing.T) {
	for _, tc := range []struct {
		filter, sub string
		want        bool
	}{
		// Plain topics: ordinary matching.
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/+/c", "a//c", true}, // + matches an empty level
		{"+/+", "a/b", true},
		{"#", "a/b/c", true},
		{"a/#", "a/b/c", true},
		{"a/#", "a", true}, // # includes the parent level [MQTT-4.7.1-2]
		{"a/#", "ab", false},
		{"a/b/#", "a", false},
		// $-topics are not matched by a leading wildcard [MQTT-4.7.2-1].
		{"#", "$SYS/broker/uptime", false},
		{"+/broker/uptime", "$SYS/broker/uptime", false},
		{"$SYS/#", "$SYS/broker/uptime", true},
		{"$SYS/+/uptime", "$SYS/broker/uptime", true},
		{"$SYS/broker/+", "$SYS/broker", false},
		// Subscription filters: covered only if every match is covered.
		{"a/#", "a/+/c", true},
		{"a/#", "a/#", true},
		{"#", "#", true},
		{"#", "+/x", true},
		{"a/+", "a/+", true},
		{"a/+", "a/#", false}, // a/# also matches a/b/c
		{"a/b", "a/+", false},
		{"a/+/c", "a/+/#", false},
		{"+/+", "+/#", false},
		{"a/+/#", "a/b/#", true},
		{"a/+/#", "a/#", false}, // a/# also matches a itself
		{"$SYS/#", "#", false},
	} {
		if got := Covers(tc.filter, tc.sub); got != tc.want {
			t.Errorf("Covers(%q, %q) = %v, want %v", tc.filter, tc.sub, got, tc.want)
		}
	}
}

func TestAllowed(t *testing.T) {
	rules := []Rule{
		{Filter: "devices/%c/#", Access: Write},
		{Filter: "cmd/%u/#", Access: Read},
		{Username: "admin", Filter: "#", Access: ReadWrite},
		{Username: "admin", Filter: "$SYS/#", Access: Read},
		{ClientID: "auditor", Filter: "secret/#", Access: Deny},
		{ClientID: "auditor", Filter: "#", Access: Read},
		{Filter: "public/#", Access: ReadWrite},
	}
	for _, tc := range []struct {
		name         string
		client, user string
		topic        string
		write        bool
		want         bool
	}{
		{"own device write", "c1", "alice", "devices/c1/temp", true, true},
		{"own device root via # parent", "c1", "alice", "devices/c1", true, true},
		{"own device read is write-only", "c1", "alice", "devices/c1/#", false, false},
		{"other device write", "c1", "alice", "devices/c2/temp", true, false},
		{"own commands read", "c1", "alice", "cmd/alice/#", false, true},
		{"own commands narrower read", "c1", "alice", "cmd/alice/+/x", false, true},
		{"own commands write is read-only", "c1", "alice", "cmd/alice/x", true, false},
		{"other user's commands", "c1", "alice", "cmd/bob/#", false, false},
		{"read wider than the rule", "c1", "alice", "cmd/+/x", false, false},
		{"read everything", "c1", "alice", "#", false, false},
		{"no rule matches", "c1", "alice", "elsewhere/x", true, false},
		{"rule for another user", "c1", "alice", "x/y", false, false},
		{"admin reads all", "ops", "admin", "#", false, true},
		{"admin writes all", "ops", "admin", "devices/c1/temp", true, true},
		{"# does not cover $SYS", "c1", "alice", "$SYS/broker/uptime", false, false},
		{"admin $SYS by explicit rule", "ops", "admin", "$SYS/#", false, true},
		{"first match wins: deny", "auditor", "", "secret/x", false, false},
		{"deny covers only its filter", "auditor", "", "other/x", false, true},
		{"deny does not cover a wider read", "auditor", "", "#", false, true},
		{"shared subscription checks the filter", "c1", "alice", "$share/g/cmd/alice/#", false, true},
		{"shared subscription outside", "c1", "alice", "$share/g/cmd/bob/#", false, false},
		{"shared prefix is case-insensitive like mochi", "c1", "alice", "$SHARE/g/cmd/alice/#", false, true},
		{"shared group name is not a topic level", "c1", "alice", "$share/cmd/alice/#", false, false},
		{"publishing to a $share topic is not a subscription", "c1", "alice", "$share/g/devices/c1/x", true, false},
		{"malformed shared filter", "c1", "alice", "$share/g", false, false},
		{"anonymous: empty %u does not widen", "c1", "", "cmd//x", false, false},
		{"anonymous: empty %u does not widen #", "c1", "", "cmd/#", false, false},
		{"anonymous still gets %c rules", "c1", "", "devices/c1/x", true, true},
		{"empty client id does not widen", "", "alice", "devices//x", true, false},
		{"client id + is not a wildcard", "+", "alice", "devices/c2/x", true, false},
		{"client id # is not a wildcard", "#", "alice", "devices/c2/x", true, false},
		{"username + is not a wildcard", "c1", "+", "cmd/bob/x", false, false},
		{"public for everyone", "", "", "public/news", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Allowed(rules, tc.client, tc.user, tc.topic, tc.write); got != tc.want {
				t.Errorf("Allowed(client=%q user=%q topic=%q write=%v) = %v, want %v", tc.client, tc.user, tc.topic, tc.write, got, tc.want)
			}
		})
	}
	t.Run("no rules allow everything", func(t *testing.T) {
		for _, topic := range []string{"a", "#", "$SYS/x", "$share/g/a"} {
			if !Allowed(nil, "c", "u", topic, true) || !Allowed(nil, "c", "u", topic, false) {
				t.Errorf("Allowed(nil rules, %q) = false", topic)
			}
		}
	})
}

func hash(t *testing.T, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func connectPacket(user, pass string) packets.Packet {
	var pk packets.Packet
	pk.Connect.Username = []byte(user)
	pk.Connect.UsernameFlag = user != ""
	pk.Connect.Password = []byte(pass)
	pk.Connect.PasswordFlag = pass != ""
	return pk
}

func TestOnConnectAuthenticate(t *testing.T) {
	users := map[string]string{"alice": hash(t, "s3cret"), "bob": hash(t, "hunter2")}
	for _, anon := range []bool{false, true} {
		h := New(Options{AllowAnonymous: anon, Users: users})
		// The order matters: a correct password first fills the cache,
		// which must not let a wrong one through afterwards.
		for _, tc := range []struct {
			user, pass string
			want       bool
		}{
			{"", "", anon},
			{"", "s3cret", anon},
			{"alice", "", false},
			{"alice", "wrong", false},
			{"alice", "s3cret", true},
			{"alice", "s3cret", true}, // cached
			{"alice", "wrong", false}, // after the cache was filled
			{"alice", "hunter2", false},
			{"bob", "hunter2", true},
			{"carol", "s3cret", false},
		} {
			if got := h.OnConnectAuthenticate(&mqtt.Client{}, connectPacket(tc.user, tc.pass)); got != tc.want {
				t.Errorf("anonymous=%v: authenticate %q/%q = %v, want %v", anon, tc.user, tc.pass, got, tc.want)
			}
		}
	}
}

func TestOnACLCheckCountsDenials(t *testing.T) {
	var writes, reads int
	h := New(Options{
		Rules: []Rule{{Filter: "devices/%c/#", Access: Write}, {Filter: "cmd/%u/#", Access: Read}},
		Denied: func(write bool) {
			if write {
				writes++
			} else {
				reads++
			}
		},
	})
	cl := &mqtt.Client{ID: "c1"}
	cl.Properties.Username = []byte("alice")
	for _, tc := range []struct {
		topic string
		write bool
		want  bool
	}{
		{"devices/c1/x", true, true},
		{"devices/c2/x", true, false},
		{"cmd/alice/#", false, true},
		{"cmd/bob/#", false, false},
		{"devices/c1/#", false, false},
	} {
		if got := h.OnACLCheck(cl, tc.topic, tc.write); got != tc.want {
			t.Errorf("OnACLCheck(%q, write=%v) = %v, want %v", tc.topic, tc.write, got, tc.want)
		}
	}
	if writes != 1 || reads != 2 {
		t.Errorf("Denied called for %d writes and %d reads, want 1 and 2", writes, reads)
	}
}

func TestProvides(t *testing.T) {
	h := New(Options{})
	for b := byte(0); b <= mqtt.StoredSysInfo; b++ {
		want := b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
		if h.Provides(b) != want {
			t.Errorf("Provides(%d) = %v, want %v", b, !want, want)
		}
	}
}

// naiveMatch is the textbook recursive MQTT matcher, the twin Covers is
// checked against for plain topics.
func naiveMatch(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (filter == "#" || strings.HasPrefix(filter, "+/") || strings.HasPrefix(filter, "#/") || filter == "+") {
		return false
	}
	var rec func(f, t []string) bool
	rec = func(f, t []string) bool {
		switch {
		case len(f) == 0:
			return len(t) == 0
		case f[0] == "#":
			return true
		case len(t) == 0:
			return false
		case f[0] == "+" || f[0] == t[0]:
			return rec(f[1:], t[1:])
		}
		return false
	}
	return rec(strings.Split(filter, "/"), strings.Split(topic, "/"))
}

func validFilter(f string) bool {
	if f == "" {
		return false
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return false
		}
		if strings.Contains(l, "+") && l != "+" {
			return false
		}
	}
	return true
}

func FuzzCovers(f *testing.F) {
	for _, s := range [][2]string{
		{"a/#", "a"}, {"a/+/c", "a//c"}, {"#", "$SYS/x"}, {"+/+", "a/b"},
		{"a/b", "a/b/c"}, {"$SYS/#", "$SYS"}, {"+", ""}, {"a/+", "a/#"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, filter, sub string) {
		if !validFilter(filter) {
			return
		}
		got := Covers(filter, sub)
		if !strings.ContainsAny(sub, "+#") {
			if want := naiveMatch(filter, sub); got != want {
				t.Fatalf("Covers(%q, %q) = %v, naive match says %v", filter, sub, got, want)
			}
			return
		}
		if !validFilter(sub) {
			return
		}
		if !Covers(sub, sub) {
			t.Fatalf("Covers(%q, %q) = false: a filter must cover itself", sub, sub)
		}
		// Soundness: a covered filter must not match a concrete topic that
		// the covering filter does not; try the topic that replaces every
		// wildcard with one level (and # additionally with nothing).
		if got {
			for _, topic := range []string{strings.ReplaceAll(strings.ReplaceAll(sub, "+", "x"), "#", "y/z"), strings.TrimSuffix(strings.ReplaceAll(sub, "+", "x"), "/#")} {
				if naiveMatch(sub, topic) && !naiveMatch(filter, topic) {
					t.Fatalf("Covers(%q, %q) = true, but %q matches the second and not the first", filter, sub, topic)
				}
			}
		}
	})
}
