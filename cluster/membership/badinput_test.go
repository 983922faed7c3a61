package membership

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// recordingHandler is a slog.Handler that keeps the records it gets.
type recordingHandler struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.recs = append(h.recs, r.Clone())
	h.mu.Unlock()
	return nil
}
func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordingHandler) WithGroup(string) slog.Handler      { return h }

// matching returns the records whose message contains s.
func (h *recordingHandler) matching(s string) []slog.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []slog.Record
	for _, r := range h.recs {
		if strings.Contains(r.Message, s) {
			out = append(out, r)
		}
	}
	return out
}

func attr(r slog.Record, key string) string {
	var v string
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v = a.Value.String()
			return false
		}
		return true
	})
	return v
}

const badLogMsg = "refused unreadable gossip input"

// TestLogBridgeBadInput: memberlist's lines about unreadable input are
// counted (follow-up lines are not) and logged at most once per interval,
// the later line carrying how many were not logged; other lines pass.
func TestLogBridgeBadInput(t *testing.T) {
	const every = time.Minute
	t0 := time.Unix(1_000_000, 0)
	tests := []struct {
		name string
		// steps: a memberlist line at an offset from t0.
		steps []struct {
			at   time.Duration
			line string
		}
		wantCount  uint64
		wantLogged []string // the "error" attribute of each bad-input log line
		wantQuiet  []string // their "not_logged" attribute ("" for none)
		wantOther  int      // lines logged as they are
	}{
		{
			name: "udp flood in one interval",
			steps: []struct {
				at   time.Duration
				line string
			}{
				{0, "[ERR] memberlist: Decrypt packet failed: unsupported encryption version 103 from=1.2.3.4:5"},
				{time.Second, "[ERR] memberlist: Decrypt packet failed: no installed keys could decrypt the message from=1.2.3.4:5"},
				{2 * time.Second, "[ERR] memberlist: msg type (77) not supported from=1.2.3.4:5"},
				{3 * time.Second, "[ERR] memberlist: Failed to decode ping request: EOF from=1.2.3.4:5"},
			},
			wantCount:  4,
			wantLogged: []string{"Decrypt packet failed: unsupported encryption version 103 from=1.2.3.4:5"},
			wantQuiet:  []string{""},
		},
		{
			name: "summary after the interval",
			steps: []struct {
				at   time.Duration
				line string
			}{
				{0, "[ERR] memberlist: failed to receive: Encryption is configured but remote state is not encrypted from=1.2.3.4:5"},
				{time.Second, "[ERR] memberlist: Failed to send error: broken pipe from=1.2.3.4:5"}, // follow-up: not counted
				{2 * time.Second, "[ERR] memberlist: Received invalid msgType (99) from=1.2.3.4:5"},
				{every + time.Second, "[ERR] memberlist: Failed to read remote state: EOF from=1.2.3.4:5"},
				{every + 2*time.Second, "[ERR] memberlist: discarding packet with unacceptable label \"x\": from=1.2.3.4:5"},
			},
			wantCount: 4,
			wantLogged: []string{
				"failed to receive: Encryption is configured but remote state is not encrypted from=1.2.3.4:5",
				"Failed to read remote state: EOF from=1.2.3.4:5",
			},
			wantQuiet: []string{"", "2"},
		},
		{
			name: "other lines untouched",
			steps: []struct {
				at   time.Duration
				line string
			}{
				{0, "[ERR] memberlist: Failed to send gossip to 1.2.3.4:5: boom"},
				{time.Second, "[WARN] memberlist: Refuting a dead message (from: n2)"},
			},
			wantOther: 2,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := &recordingHandler{}
			now := t0
			b := &logBridge{log: slog.New(h), badLogEvery: every, now: func() time.Time { return now }}
			for _, s := range tc.steps {
				now = t0.Add(s.at)
				if _, err := b.Write([]byte(s.line + "\n")); err != nil {
					t.Fatal(err)
				}
			}
			if got := b.badCount(); got != tc.wantCount {
				t.Errorf("counted %d, want %d", got, tc.wantCount)
			}
			logged := h.matching(badLogMsg)
			if len(logged) != len(tc.wantLogged) {
				t.Fatalf("%d bad-input log lines, want %d: %v", len(logged), len(tc.wantLogged), logged)
			}
			for i, r := range logged {
				if got := attr(r, "error"); got != tc.wantLogged[i] {
					t.Errorf("line %d: error %q, want %q", i, got, tc.wantLogged[i])
				}
				if got := attr(r, "not_logged"); got != tc.wantQuiet[i] {
					t.Errorf("line %d: not_logged %q, want %q", i, got, tc.wantQuiet[i])
				}
				if r.Level != slog.LevelWarn {
					t.Errorf("line %d: level %v, want WARN", i, r.Level)
				}
			}
			if other := len(h.recs) - len(logged); other != tc.wantOther {
				t.Errorf("%d other lines logged, want %d", other, tc.wantOther)
			}
		})
	}
}

// TestGossipBadInput: garbage sent by an outsider to the UDP and TCP
// gossip port of a running, encrypted member (memberlist's own
// transport) is counted in Stats.BadInput and logged once, and the member
// keeps working.
func TestGossipBadInput(t *testing.T) {
	h := &recordingHandler{}
	start := func(name string, seeds []string) *Membership {
		cfg := LoopbackConfig()
		cfg.NodeName = name
		cfg.Seeds = seeds
		cfg.SecretKey = []byte("a passphrase that is long enough")
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		if name == "a" {
			cfg.Logger = slog.New(h)
		}
		m, err := New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Shutdown() })
		return m
	}
	a := start("a", nil)
	addr := *a.localAddr.Load()
	b := start("b", []string{addr})
	waitMembers := func(what string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			if m, ok := a.Member("b"); ok && (m.State == Alive || m.State == Suspect) {
				if m, ok := b.Member("a"); ok && (m.State == Alive || m.State == Suspect) {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: a and b do not see each other alive", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitMembers("before")

	const packets, streams = 50, 5
	u, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for i := range packets {
		payload := []byte(fmt.Sprintf("not gossip %d", i))
		if i%2 == 1 {
			payload = []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
		}
		if _, err := u.Write(payload); err != nil {
			t.Fatal(err)
		}
	}
	for range streams {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write(bytes.Repeat([]byte{0xff}, 64))
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, _ = io.Copy(io.Discard, c) // until memberlist hangs up
		_ = c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for a.Stats().BadInput < packets+streams {
		if time.Now().After(deadline) {
			t.Fatalf("counted %d unreadable inputs, want %d", a.Stats().BadInput, packets+streams)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := a.Stats().BadInput; got != packets+streams {
		t.Errorf("counted %d unreadable inputs, want exactly %d", got, packets+streams)
	}
	if got := len(h.matching(badLogMsg)); got != 1 {
		t.Errorf("%d log lines about unreadable input, want 1 (rate limited)", got)
	}
	if got := len(h.matching("Decrypt packet failed")) + len(h.matching("failed to receive")); got != 0 {
		t.Errorf("%d of memberlist's own lines about the garbage got through", got)
	}
	if b.Stats().BadInput != 0 {
		t.Errorf("b counted %d unreadable inputs, want 0 (none sent to it)", b.Stats().BadInput)
	}
	waitMembers("after")
}
