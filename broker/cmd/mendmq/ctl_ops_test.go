package main

import (
	"bytes"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mendmq/mendmq/broker"
	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/reserved"
	"github.com/mendmq/mendmq/cluster"
)

func runCtlArgs(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := ctl(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestCtlSessionsAndRetained drives sessions and retained messages of a
// two-node cluster through `mendmq ctl`: a session is shown and kicked
// from the node that does not hold it, and a retained delete on one node
// clears the message on the other.
func TestCtlSessionsAndRetained(t *testing.T) {
	injected := &inlineIDs{}
	start := func(name string, seeds ...string) *brokertest.Node {
		cfg := brokertest.Config()
		cfg.Node.Name = name
		cfg.Cluster = cluster.LoopbackConfig()
		cfg.Cluster.Seeds = seeds
		return brokertest.Start(t, cfg, func(b *broker.Broker) error {
			if name == "ops-b" {
				return b.AddHook(injected, nil)
			}
			return nil
		})
	}
	a := start("ops-a")
	var seed string
	for _, m := range a.Cluster().Status().Members {
		seed = m.GossipAddr
	}
	b := start("ops-b", seed)
	brokertest.Eventually(t, "both nodes alive and connected", func() bool {
		for _, nd := range []*brokertest.Node{a, b} {
			st := nd.Cluster().Status()
			if len(st.Members) != 2 {
				return false
			}
			for _, m := range st.Members {
				if m.State != "alive" || !m.Self && !m.Reachable {
					return false
				}
			}
		}
		return true
	})
	on := func(nd *brokertest.Node, args ...string) (int, string, string) {
		return runCtlArgs(append([]string{"--admin", nd.AdminAddr()}, args...)...)
	}

	far := brokertest.MustV5(t, b.URL(0), "far-1")
	far.MustSub("x/#", 1)
	brokertest.Eventually(t, "ops-a to place far-1 on ops-b", func() bool {
		n, ok := a.Cluster().SessionNode("far-1")
		return ok && n == "ops-b"
	})
	if code, out, errOut := on(a, "sessions", "show", "far-1"); code != 0 || !strings.Contains(out, "ops-b (asked through ops-a)") || !strings.Contains(out, "x/#") {
		t.Errorf("ctl sessions show far-1 on ops-a: exit %d\n%s%s\nwant the session as ops-b holds it", code, out, errOut)
	}
	code, out, errOut := on(b, "sessions", "list")
	if code != 0 || !strings.Contains(out, "far-1") || !strings.HasPrefix(out, "CLIENT") {
		t.Fatalf("sessions list on ops-b: %d %q %q", code, out, errOut)
	}
	code, out, _ = on(b, "sessions", "list", "--json", "--prefix", "far-")
	var sl broker.SessionList
	if code != 0 || json.Unmarshal([]byte(out), &sl) != nil || len(sl.Sessions) != 1 || sl.Sessions[0].Node != "ops-b" {
		t.Fatalf("sessions list --json: %d %q", code, out)
	}
	if code, out, _ := on(b, "subscriptions", "list", "--matches", "x/y"); code != 0 || !strings.Contains(out, "far-1") {
		t.Errorf("subscriptions list --matches x/y: %d %q", code, out)
	}
	if code, out, _ := on(b, "sessions", "show", "far-1"); code != 0 || !strings.Contains(out, "x/#") {
		t.Errorf("sessions show far-1: %d %q", code, out)
	}

	// Retained: set on ops-a, deleted through ops-b, gone on ops-a.
	brokertest.MustV5(t, a.URL(0), "setter").MustPub("x/r", 1, true, "kept")
	brokertest.Eventually(t, "ops-b to hold the retained message", func() bool {
		_, ok := b.Server().Topics.Retained.Get("x/r")
		return ok
	})
	if m := far.Next(); m.Topic != "x/r" {
		t.Fatalf("far-1 got %s", m.Topic)
	}
	// The forwarded publish entered ops-b through an injector client,
	// whose id the reserved hook keeps clients from taking.
	if ids := injected.get(); len(ids) == 0 {
		t.Error("no injected publish seen on ops-b")
	} else {
		for _, id := range ids {
			if !strings.HasPrefix(id, reserved.InjectorPrefix) {
				t.Errorf("injector client id %q lacks reserved.InjectorPrefix %q (broker/clusterhook changed it?)", id, reserved.InjectorPrefix)
			}
		}
	}
	if code, out, _ := on(b, "retained", "get", "x/r"); code != 0 || !strings.Contains(out, `"kept"`) {
		t.Errorf("retained get: %d %q", code, out)
	}
	if code, out, errOut := on(b, "retained", "delete", "x/r"); code != 0 {
		t.Fatalf("retained delete: %d %q %q", code, out, errOut)
	}
	brokertest.Eventually(t, "the deletion to replicate to ops-a", func() bool {
		_, inMochi := a.Server().Topics.Retained.Get("x/r")
		_, inTable := a.Cluster().Retained("x/r")
		return !inMochi && !inTable
	})
	if m := far.Next(); m.Topic != "x/r" || len(m.Payload) != 0 {
		t.Errorf("subscriber got %s %q, want the empty retained message", m.Topic, m.Payload)
	}
	if code, _, errOut := on(a, "retained", "get", "x/r"); code != exitServer || !strings.Contains(errOut, "404") {
		t.Errorf("retained get after delete: %d %q", code, errOut)
	}
	// A kick through ops-a reaches the client on ops-b.
	if code, out, errOut := on(a, "sessions", "kick", "far-1"); code != 0 || !strings.Contains(out, "kicked far-1 from ops-b") {
		t.Errorf("ctl sessions kick far-1 on ops-a: exit %d, %q %q; want kicked from ops-b", code, out, errOut)
	}
	if d := far.WaitServerDisconnect(); d == nil || d.ReasonCode != 0x98 {
		t.Errorf("far-1 on ops-b: server disconnect %+v, want reason 0x98 (administrative action)", d)
	}
	if code, _, errOut := on(a, "sessions", "kick", "nobody-here"); code != exitServer || !strings.Contains(errOut, "404") {
		t.Errorf("kick of an unknown client through ops-a: exit %d, %q; want 404", code, errOut)
	}
}

// TestCtlExitCodes: 0 ok, 1 the node said no, 2 usage, 3 unreachable.
func TestCtlExitCodes(t *testing.T) {
	n := brokertest.Start(t, brokertest.Config())
	admin := n.AdminAddr()
	for _, tc := range []struct {
		args []string
		code int
		out  string // substring of stdout+stderr
	}{
		{[]string{"--admin", admin, "status"}, 0, "node test"},
		{[]string{"--admin", admin, "health"}, 0, "ok"},
		{[]string{"--admin", admin, "health", "--ready"}, 0, "ready"},
		{[]string{"--admin", admin, "--json", "status"}, 0, `"node": "test"`},
		{[]string{"--admin", admin, "policy", "list"}, 0, "latestupdate"},
		{[]string{"--admin", admin, "policy", "list", "--json"}, 0, `"sha256"`},
		{[]string{"--admin", admin, "policy", "conflicts"}, 0, "REF"},
		{[]string{"--admin", admin, "policy", "conflicts", "list", "--scope", "node"}, 0, "REF"},
		{[]string{"--admin", admin, "policy", "conflicts", "list", "--scope", "world"}, 1, "400"},
		{[]string{"--admin", admin, "policy", "conflicts", "--json"}, 0, `"scope": "node"`},
		{[]string{"--admin", admin, "policy", "conflicts", "drop", "7"}, 1, "404"},
		{[]string{"--admin", admin, "policy", "conflicts", "drop", "test/7"}, 1, "404"},
		{[]string{"--admin", admin, "policy", "conflicts", "drop", "n2/7"}, 1, "clustering is disabled"},
		{[]string{"--admin", admin, "policy", "conflicts", "drop", "n2/x/7"}, 2, "NODE/ID"},
		{[]string{"--admin", admin, "policy", "conflicts", "drop", "/7"}, 2, "NODE/ID"},
		{[]string{"--admin", admin, "policy", "conflicts", "resolve", "test/7", "rerun"}, 1, "404"},
		{[]string{"--admin", admin, "policy", "conflicts", "resolve", "7"}, 2, "usage"},
		{[]string{"--admin", admin, "retained", "list"}, 0, "TOPIC"},
		{[]string{"--admin", admin, "cluster", "status"}, 0, "clustering disabled"},
		{[]string{"--admin", admin, "retained", "get", "no/such"}, 1, "404"},
		{[]string{"--admin", admin, "policy", "drop", "7"}, 1, "404"},
		{[]string{"--admin", admin, "policy", "resolve", "7", "take_merging"}, 1, "404"},
		{[]string{"--admin", admin, "policy", "resolve", "7", "merge-it"}, 1, "400"},
		{[]string{"--admin", admin, "policy", "resolve", "7"}, 2, "usage"},
		{[]string{"--admin", admin, "cluster", "leave"}, 1, "409"},
		{[]string{"--admin", admin, "sessions", "list", "--state", "asleep"}, 1, "400"},
		{[]string{"--admin", admin}, 2, "usage"},
		{[]string{"--admin", admin, "sessions"}, 2, "usage"},
		{[]string{"--admin", admin, "sessions", "kick"}, 2, "usage"},
		{[]string{"--admin", admin, "frobnicate"}, 2, "usage"},
		{[]string{"--bogus-flag"}, 2, ""},
		{[]string{"--admin", admin, "--token-file", "/nonexistent", "status"}, 2, "--token-file"},
		{[]string{"--admin", "127.0.0.1:1", "status"}, 3, "is the node running"},
		{[]string{"--admin", "127.0.0.1:1", "health"}, 3, ""},
	} {
		t.Run(strings.Join(tc.args[min(2, len(tc.args)):], " "), func(t *testing.T) {
			code, out, errOut := runCtlArgs(tc.args...)
			if code != tc.code || !strings.Contains(out+errOut, tc.out) {
				t.Errorf("ctl %v: exit %d\nstdout %q\nstderr %q\nwant exit %d with %q", tc.args, code, out, errOut, tc.code, tc.out)
			}
		})
	}
}

// TestCtlCredentials: ctl reads the admin token (flag or environment)
// and speaks https with a CA and a client certificate.
func TestCtlCredentials(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("ctl-test-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := brokertest.WriteTLSFiles(t)
	cfg := brokertest.Config()
	cfg.Admin.TokenFile = tok
	n := brokertest.Start(t, cfg)
	cfgTLS := brokertest.Config()
	cfgTLS.Admin.TLS.CertFile, cfgTLS.Admin.TLS.KeyFile, cfgTLS.Admin.TLS.ClientCAFile = f.CertFile, f.KeyFile, f.CAFile
	nTLS := brokertest.Start(t, cfgTLS)
	https := "https://" + nTLS.AdminAddr()

	for _, tc := range []struct {
		name string
		env  string // MENDMQ_ADMIN_TOKEN_FILE
		args []string
		code int
		out  string
	}{
		{"no token", "", []string{"--admin", n.AdminAddr(), "status"}, 1, "401"},
		{"token flag", "", []string{"--admin", n.AdminAddr(), "--token-file", tok, "status"}, 0, "node test"},
		{"token flag after the command", "", []string{"--admin", n.AdminAddr(), "policy", "list", "--token-file", tok}, 0, "latestupdate"},
		{"token from the environment", tok, []string{"--admin", n.AdminAddr(), "status"}, 0, "node test"},
		{"health needs no token", "", []string{"--admin", n.AdminAddr(), "health"}, 0, "ok"},
		{"mutual TLS", "", []string{"--admin", https, "--cacert", f.CAFile, "--cert", f.ClientCertFile, "--key", f.ClientKeyFile, "status"}, 0, "node test"},
		{"TLS without a client certificate", "", []string{"--admin", https, "--cacert", f.CAFile, "status"}, 1, "401"},
		{"TLS without the CA", "", []string{"--admin", https, "status"}, 3, "certificate"},
		{"cert without key", "", []string{"--admin", https, "--cert", f.ClientCertFile, "status"}, 2, "--cert and --key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("MENDMQ_ADMIN_TOKEN_FILE", tc.env)
			code, out, errOut := runCtlArgs(tc.args...)
			if code != tc.code || !strings.Contains(out+errOut, tc.out) {
				t.Errorf("exit %d\nstdout %q\nstderr %q\nwant exit %d with %q", code, out, errOut, tc.code, tc.out)
			}
		})
	}
}

// inlineIDs records the client ids of inline clients' publishes.
type inlineIDs struct {
	mqtt.HookBase
	mu  sync.Mutex
	ids []string
}

func (h *inlineIDs) ID() string           { return "test-inline-ids" }
func (h *inlineIDs) Provides(b byte) bool { return b == mqtt.OnPublish }

func (h *inlineIDs) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline && cl.ID != mqtt.InlineClientId {
		h.mu.Lock()
		h.ids = append(h.ids, cl.ID)
		h.mu.Unlock()
	}
	return pk, nil
}

func (h *inlineIDs) get() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.ids...)
}
