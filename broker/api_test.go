package broker_test

import (
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mendmq/mendmq/broker"
	"github.com/mendmq/mendmq/broker/admin"
	"github.com/mendmq/mendmq/broker/brokertest"
)

// call does one admin API request and decodes a JSON answer into out
// (when not nil); it returns the status code and the raw body.
func call(t *testing.T, n *brokertest.Node, method, path, body string, out any) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+n.AdminAddr()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Timeout: brokertest.Timeout}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode/100 == 2 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
	return resp.StatusCode, string(b)
}

func mustCall(t *testing.T, n *brokertest.Node, method, path, body string, want int, out any) string {
	t.Helper()
	code, b := call(t, n, method, path, body, out)
	if code != want {
		t.Fatalf("%s %s = %d %s, want %d", method, path, code, b, want)
	}
	return b
}

func TestSessionsAPI(t *testing.T) {
	t.Parallel()
	n := brokertest.Start(t, brokertest.Config())
	url := n.URL(0)
	s1 := brokertest.MustV5(t, url, "sensor-1", brokertest.V5Options{KeepSession: true, SessionExpiry: 300})
	s1.MustSub("a/#", 1)
	s1.MustSub("$share/g/b", 0)
	brokertest.MustV3(t, url, "sensor-2")
	brokertest.MustV5(t, url, "other")

	var list broker.SessionList
	mustCall(t, n, "GET", "/api/v1/sessions", "", 200, &list)
	if got := ids(list.Sessions); got != "other sensor-1 sensor-2" || list.Scope != "node" || list.Node != "test" {
		t.Fatalf("sessions %q scope %q node %q", got, list.Scope, list.Node)
	}
	mustCall(t, n, "GET", "/api/v1/sessions?prefix=sensor-&limit=1", "", 200, &list)
	if got := ids(list.Sessions); got != "sensor-1" || !list.Truncated {
		t.Fatalf("prefix+limit: %q truncated=%v", got, list.Truncated)
	}
	mustCall(t, n, "GET", "/api/v1/sessions?node=test&state=connected", "", 200, &list)
	if len(list.Sessions) != 3 {
		t.Fatalf("connected: %q", ids(list.Sessions))
	}
	if code, body := call(t, n, "GET", "/api/v1/sessions?node=elsewhere", "", nil); code != 409 || !strings.Contains(body, `"node": "elsewhere"`) {
		t.Fatalf("node=elsewhere: %d %s", code, body)
	}

	// A kept session of a gone client, with a message queued for it.
	s1.Close()
	brokertest.MustV5(t, url, "pub").MustPub("a/x", 1, false, "queued")
	brokertest.Eventually(t, "sensor-1 listed as disconnected", func() bool {
		call(t, n, "GET", "/api/v1/sessions?state=disconnected", "", &list)
		return ids(list.Sessions) == "sensor-1"
	})
	var si broker.SessionInfo
	brokertest.Eventually(t, "sensor-1's queued message", func() bool {
		mustCall(t, n, "GET", "/api/v1/sessions/show?client_id=sensor-1", "", 200, &si)
		return si.Queued == 1
	})
	if si.Connected || si.Clean || si.Protocol != 5 || si.ExpiryInterval != 300 || si.DisconnectedAt == nil ||
		len(si.Subs) != 2 || si.Subs[0].Filter != "$share/g/b" || si.Subs[1].Filter != "a/#" || si.Subs[1].QoS != 1 {
		t.Fatalf("show sensor-1: %+v", si)
	}
	mustCall(t, n, "GET", "/api/v1/sessions/show?client_id=nobody", "", 404, nil)

	// Kick: a connected v5 client gets DISCONNECT 0x98; a disconnected
	// one is reported as not kicked; an unknown one is 404.
	o := brokertest.MustV5(t, url, "other-2")
	var kr broker.KickResult
	mustCall(t, n, "POST", "/api/v1/sessions/kick", `{"client_id":"other-2"}`, 200, &kr)
	if !kr.Kicked || kr.Node != "test" {
		t.Fatalf("kick: %+v", kr)
	}
	if d := o.WaitServerDisconnect(); d.ReasonCode != 0x98 {
		t.Errorf("kicked client's DISCONNECT reason 0x%02x, want 0x98 administrative action", d.ReasonCode)
	}
	mustCall(t, n, "POST", "/api/v1/sessions/kick", `{"client_id":"sensor-1"}`, 200, &kr)
	if kr.Kicked {
		t.Errorf("kicking a disconnected session: %+v", kr)
	}
	mustCall(t, n, "POST", "/api/v1/sessions/kick", `{"client_id":"nobody"}`, 404, nil)
	v3 := brokertest.MustV3(t, url, "v3-kick")
	mustCall(t, n, "POST", "/api/v1/sessions/kick", `{"client_id":"v3-kick"}`, 200, &kr)
	v3.WaitLost()

	// Subscriptions.
	var subs broker.SubscriptionList
	mustCall(t, n, "GET", "/api/v1/subscriptions?matches=a/b/c", "", 200, &subs)
	if len(subs.Subscriptions) != 1 || subs.Subscriptions[0].ClientID != "sensor-1" || subs.Subscriptions[0].Filter != "a/#" {
		t.Fatalf("matches=a/b/c: %+v", subs.Subscriptions)
	}
	mustCall(t, n, "GET", "/api/v1/subscriptions?filter_prefix=$share", "", 200, &subs)
	if len(subs.Subscriptions) != 1 || subs.Subscriptions[0].Filter != "$share/g/b" {
		t.Fatalf("filter_prefix=$share: %+v", subs.Subscriptions)
	}
	mustCall(t, n, "GET", "/api/v1/subscriptions?client_prefix=other", "", 200, &subs)
	if len(subs.Subscriptions) != 0 {
		t.Fatalf("client_prefix=other: %+v", subs.Subscriptions)
	}
}

func ids(ss []broker.SessionInfo) string {
	var out []string
	for _, s := range ss {
		out = append(out, s.ClientID)
	}
	return strings.Join(out, " ")
}

// TestRetainedAPI reads and deletes retained messages; a delete goes
// through mochi like a client's empty retained publish: subscribers see
// it, and storage forgets the message across a restart.
func TestRetainedAPI(t *testing.T) {
	t.Parallel()
	cfg := brokertest.Config()
	cfg.Storage.Path = filepath.Join(t.TempDir(), "r.db")
	n := brokertest.Start(t, cfg)
	p := brokertest.MustV5(t, n.URL(0), "setter")
	p.MustPub("r/1", 1, true, "one")
	p.MustPub("r/2", 1, true, "\xff\xfe")
	p.MustPub("q/3", 0, true, "three")
	p.Fence()

	var rl broker.RetainedList
	mustCall(t, n, "GET", "/api/v1/retained?topic=r/1", "", 200, &rl)
	if len(rl.Messages) != 1 || rl.Messages[0].Payload == nil || *rl.Messages[0].Payload != "one" || rl.Messages[0].Origin != "setter" ||
		rl.Messages[0].QoS != 1 || rl.Messages[0].CreatedAt == nil {
		t.Fatalf("topic=r/1: %+v", rl.Messages)
	}
	mustCall(t, n, "GET", "/api/v1/retained?filter=r/%23", "", 200, &rl)
	if len(rl.Messages) != 2 || rl.Messages[1].Topic != "r/2" || rl.Messages[1].PayloadB64 == nil || *rl.Messages[1].PayloadB64 != "//4=" {
		t.Fatalf("filter=r/#: %+v", rl.Messages)
	}
	mustCall(t, n, "GET", "/api/v1/retained?filter=%23&limit=1", "", 200, &rl)
	if len(rl.Messages) != 1 || !rl.Truncated {
		t.Fatalf("limit=1: %+v", rl)
	}
	mustCall(t, n, "GET", "/api/v1/retained?topic=r/none", "", 404, nil)

	sub := brokertest.MustV5(t, n.URL(0), "watcher")
	sub.MustSub("r/1", 0)
	if m := sub.Next(); string(m.Payload) != "one" {
		t.Fatalf("retained r/1 = %q", m.Payload)
	}
	mustCall(t, n, "DELETE", "/api/v1/retained?topic=r/1", "", 200, nil)
	if m := sub.Next(); m.Topic != "r/1" || len(m.Payload) != 0 {
		t.Errorf("subscriber got %s %q, want the empty retained message", m.Topic, m.Payload)
	}
	mustCall(t, n, "GET", "/api/v1/retained?topic=r/1", "", 404, nil)
	mustCall(t, n, "DELETE", "/api/v1/retained?topic=r/1", "", 404, nil)
	mustCall(t, n, "GET", "/api/v1/retained?filter=%23", "", 200, &rl)
	if len(rl.Messages) != 2 {
		t.Fatalf("after the delete: %+v", rl.Messages)
	}

	// Storage forgot it too.
	n.Stop()
	n2 := brokertest.Start(t, cfg)
	mustCall(t, n2, "GET", "/api/v1/retained?topic=r/1", "", 404, nil)
	mustCall(t, n2, "GET", "/api/v1/retained?topic=r/2", "", 200, nil)
}

// TestAdminAPIRefusesBadInput sends every endpoint what it must refuse:
// malformed JSON, unknown fields, oversized bodies, bodies where none is
// taken, unknown or malformed query parameters, path traversal. Each gets
// a 4xx with a JSON error, and the node's state is the same afterwards.
func TestAdminAPIRefusesBadInput(t *testing.T) {
	t.Parallel()
	n := brokertest.Start(t, brokertest.Config())
	c := brokertest.MustV5(t, n.URL(0), "victim", brokertest.V5Options{KeepSession: true, SessionExpiry: 60})
	c.MustSub("v/#", 1)
	c.MustPub("v/r", 1, true, "kept")
	c.Fence()

	huge := `{"client_id":"` + strings.Repeat("x", admin.MaxBody) + `"}`
	for _, tc := range []struct {
		method, path, body string
		want               int
	}{
		{"POST", "/api/v1/sessions/kick", `{"client_id":"victim"`, 400},
		{"POST", "/api/v1/sessions/kick", `{"client_id":"victim","discard":true}`, 400},
		{"POST", "/api/v1/sessions/kick", `{"clientid":"victim"}`, 400},
		{"POST", "/api/v1/sessions/kick", `["victim"]`, 400},
		{"POST", "/api/v1/sessions/kick", `{"client_id":"victim"} trailing`, 400},
		{"POST", "/api/v1/sessions/kick", ``, 400},
		{"POST", "/api/v1/sessions/kick", huge, 413},
		{"POST", "/api/v1/cluster/join", `{"seeds":`, 4},
		{"POST", "/api/v1/cluster/leave", `{"now":true}`, 400},
		{"POST", "/api/v1/cluster/forget/n2", `{"x":1}`, 400},
		{"POST", "/api/v1/policies/reload", `{"module":"../../../etc/passwd"}`, 400},
		{"POST", "/api/v1/policies/reload", `{"policies":{"p":{"module":"/etc/passwd"}}}`, 400},
		{"POST", "/api/v1/policies/reload", huge, 413},
		{"DELETE", "/api/v1/policies/conflicts/..%2F..%2Fetc%2Fpasswd", ``, 400},
		{"DELETE", "/api/v1/policies/conflicts/1", `{"x":1}`, 400},
		{"DELETE", "/api/v1/policies/conflicts/99", ``, 404},
		{"DELETE", "/api/v1/policies/conflicts/test/99", ``, 404},
		{"DELETE", "/api/v1/policies/conflicts/n2/99", ``, 404},
		{"DELETE", "/api/v1/policies/conflicts/..%2F..%2Fetc/1", ``, 404},
		{"DELETE", "/api/v1/policies/conflicts/n2/x", ``, 400},
		{"POST", "/api/v1/policies/conflicts/n2/1", `{"action":"apply"}`, 400},
		{"POST", "/api/v1/policies/conflicts/n2/1", `{"action":"rerun","x":1}`, 400},
		{"GET", "/api/v1/policies/conflicts?scope=world", ``, 400},
		{"GET", "/api/v1/policies/conflicts?limit=0", ``, 400},
		{"GET", "/api/v1/policies/conflicts?node=n2", ``, 400},
		{"DELETE", "/api/v1/retained?topic=v/%2B", ``, 400},
		{"DELETE", "/api/v1/retained?topic=", ``, 400},
		{"DELETE", "/api/v1/retained?topic=$SYS/broker/uptime", ``, 400},
		{"DELETE", "/api/v1/retained?topic=v/r&topic=v/r", ``, 400},
		{"DELETE", "/api/v1/retained?filter=%23", ``, 400},
		{"DELETE", "/api/v1/retained?topic=../../etc/passwd", ``, 404},
		{"GET", "/api/v1/retained", ``, 400},
		{"GET", "/api/v1/retained?topic=a&filter=b", ``, 400},
		{"GET", "/api/v1/retained?filter=a/%23/b", ``, 400},
		{"GET", "/api/v1/retained?filter=%23&limit=0", ``, 400},
		{"GET", "/api/v1/sessions?state=asleep", ``, 400},
		{"GET", "/api/v1/sessions?limit=many", ``, 400},
		{"GET", "/api/v1/sessions?client=victim", ``, 400},
		{"GET", "/api/v1/sessions/show", ``, 400},
		{"GET", "/api/v1/subscriptions?matches=a/%23", ``, 400},
		{"GET", "/api/v1/overview?verbose=1", ``, 400},
		{"PUT", "/api/v1/sessions", `{}`, 404},
		{"GET", "/api/v1/../../etc/passwd", ``, 4},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			before := snapshot(t, n)
			code, body := call(t, n, tc.method, tc.path, tc.body, nil)
			if tc.want < 10 && code/100 != tc.want || tc.want >= 10 && code != tc.want {
				t.Errorf("= %d %.200s, want %d", code, body, tc.want)
			}
			if code/100 == 4 && !strings.Contains(body, `"error"`) {
				t.Errorf("%d without a JSON error: %.200s", code, body)
			}
			if after := snapshot(t, n); after != before {
				t.Errorf("state changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
	if d, ok := c.ServerDisconnect(); ok {
		t.Errorf("the client was disconnected: %+v", d)
	}
}

// snapshot is the part of a node's state the admin API can change.
func snapshot(t *testing.T, n *brokertest.Node) string {
	t.Helper()
	var sl broker.SessionList
	var rl broker.RetainedList
	var pl []map[string]any
	mustCall(t, n, "GET", "/api/v1/sessions", "", 200, &sl)
	mustCall(t, n, "GET", "/api/v1/retained?filter=%23", "", 200, &rl)
	mustCall(t, n, "GET", "/api/v1/policies", "", 200, &pl)
	for _, p := range pl {
		delete(p, "instances")
	}
	b, _ := json.Marshal([]any{sl, rl, pl, n.Cluster() == nil})
	return string(b)
}

// TestOverview: the status page's one request has the node, its
// counters and the policies with their counts; netsplit and maps are
// reserved (null) until those parts exist.
func TestOverview(t *testing.T) {
	t.Parallel()
	n := brokertest.Start(t, brokertest.Config())
	c := brokertest.MustV5(t, n.URL(0), "c")
	c.MustSub("o/t", 1)
	c.MustPub("o/t", 1, false, "x")
	c.Next()
	var raw map[string]json.RawMessage
	mustCall(t, n, "GET", "/api/v1/overview", "", 200, &raw)
	for _, k := range []string{"netsplit", "maps", "cluster"} {
		if string(raw[k]) != "null" {
			t.Errorf("%s = %s, want null", k, raw[k])
		}
	}
	var o broker.Overview
	mustCall(t, n, "GET", "/api/v1/overview", "", 200, &o)
	if o.Node != "test" || !o.Ready || o.MQTT.ClientsConnected != 1 || o.MQTT.Sessions != 1 || o.MQTT.MessagesIn < 1 {
		t.Errorf("overview: %+v", o)
	}
	var latest *broker.PolicyOverview
	for i := range o.Policies {
		if o.Policies[i].Name == "latestupdate" {
			latest = &o.Policies[i]
		}
	}
	if latest == nil || !latest.Loaded || len(latest.SHA256) != 64 || latest.LoadedAt.IsZero() {
		t.Errorf("latestupdate in the overview: %+v", latest)
	}
}

// TestStatusPageServed: the page and its assets are embedded and served
// without any external reference.
func TestStatusPageServed(t *testing.T) {
	t.Parallel()
	n := brokertest.Start(t, brokertest.Config())
	for path, want := range map[string]string{"/": "<title>mendmq status</title>", "/ui/app.js": "api/v1/overview", "/ui/style.css": "@media"} {
		code, body := n.Get(path)
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("GET %s = %d, want 200 with %q", path, code, want)
		}
		for _, ext := range []string{"http://", "https://", "//cdn"} {
			if strings.Contains(body, ext) && path != "/ui/app.js" {
				t.Errorf("GET %s references %s: the page must work offline", path, ext)
			}
		}
	}
}
