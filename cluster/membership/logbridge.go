package membership

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// logBridge is the io.Writer behind memberlist's *log.Logger: it turns
// each "[LEVEL] memberlist: message" line into a slog record and passes
// lines about local probe failures to onSuspect, because memberlist
// reports suspicion nowhere else (see State Suspect).
//
// memberlist reports gossip input it cannot read (a packet or stream that
// does not decrypt with the secret key, is malformed or has an unknown
// type) only as one ERROR line each, so anyone who can reach the gossip
// port could flood the log. The bridge counts those lines (badInput) and
// logs the first one, then at most one summary per badLogEvery.
type logBridge struct {
	log       *slog.Logger
	onSuspect func(name string)

	// badLogEvery spaces the log lines about bad input; 0 means
	// defaultBadLogEvery. now is time.Now (tests replace it).
	badLogEvery time.Duration
	now         func() time.Time

	badInput atomic.Uint64 // gossip packets and streams refused as unreadable

	mu        sync.Mutex
	badLogged time.Time // when the last line about bad input was logged
	badQuiet  uint64    // bad inputs since then, not logged
	badLast   string    // the last of them
}

// defaultBadLogEvery is the shortest interval between two log lines about
// unreadable gossip input.
const defaultBadLogEvery = time.Minute

// Prefix and suffix of memberlist's (v0.7.0 state.go probeNode) log line
// for a failed probe, memberlist's only report of a local suspicion (no
// delegate hears of it); TestSuspicionFromMemberlistLogPinned fails if
// memberlist changes it.
const (
	suspectPrefix = "memberlist: Suspect "
	suspectSuffix = " has failed, no acks received"
)

// badInputPrefixes start memberlist's (v0.7.0 net.go) log lines about one
// packet or stream it could not read, after "memberlist: ".
var badInputPrefixes = []string{
	// Packets (UDP).
	"Decrypt packet failed",
	"missing message type byte",
	"msg type (",     // "msg type (%d) not supported"
	"Message type (", // "Message type (%d) not supported ... (packet handler)"
	"Failed to decode ",
	"Failed to decompress payload",
	"Got invalid checksum for UDP packet",
	"discarding packet with unacceptable label",
	"unexpected double packet label header",
	"cannot decode label",          // label header errors, logged bare
	"label header cannot be empty", // idem
	// Streams (TCP).
	"failed to receive and remove the stream label header",
	"unexpected double stream label header",
	"discarding stream with unacceptable label",
	"failed to receive: ",
	"Failed to receive user message",
	"Failed to read remote state",
	"Received invalid msgType",
}

// badInputFollowUps are memberlist's lines that follow a bad stream's
// (answering it with an error): rate limited with it, not counted again.
var badInputFollowUps = []string{
	"Failed to encode error response",
	"Failed to send error",
}

func (b *logBridge) Write(p []byte) (int, error) {
	line := strings.TrimRight(string(p), "\r\n")
	level, msg := slog.LevelInfo, line
	if strings.HasPrefix(line, "[") {
		if i := strings.IndexByte(line, ']'); i > 0 {
			switch line[1:i] {
			case "DEBUG":
				level = slog.LevelDebug
			case "WARN":
				level = slog.LevelWarn
			case "ERR", "ERROR":
				level = slog.LevelError
			}
			msg = strings.TrimSpace(line[i+1:])
		}
	}
	if strings.HasPrefix(msg, suspectPrefix) && strings.HasSuffix(msg, suspectSuffix) && b.onSuspect != nil {
		b.onSuspect(msg[len(suspectPrefix) : len(msg)-len(suspectSuffix)])
	}
	text := strings.TrimPrefix(msg, "memberlist: ")
	if hasAnyPrefix(text, badInputPrefixes) {
		b.bad(text, true)
		return len(p), nil
	}
	if hasAnyPrefix(text, badInputFollowUps) {
		b.bad(text, false)
		return len(p), nil
	}
	// Refused alive messages repeat with every gossip round; membership
	// logs each refusal itself, rate limited.
	if strings.HasPrefix(text, "ignoring alive message") ||
		strings.HasPrefix(text, "Conflicting address") {
		level = slog.LevelDebug
	}
	if b.log.Enabled(context.Background(), level) {
		b.log.Log(context.Background(), level, text, "component", "memberlist")
	}
	return len(p), nil
}

// bad counts (if count) and logs, rate limited, a line about unreadable
// gossip input.
func (b *logBridge) bad(text string, count bool) {
	if count {
		b.badInput.Add(1)
	}
	now := time.Now
	if b.now != nil {
		now = b.now
	}
	every := b.badLogEvery
	if every <= 0 {
		every = defaultBadLogEvery
	}
	t := now()
	b.mu.Lock()
	if !b.badLogged.IsZero() && t.Sub(b.badLogged) < every {
		b.badQuiet++
		b.badLast = text
		b.mu.Unlock()
		return
	}
	quiet, last := b.badQuiet, b.badLast
	b.badLogged, b.badQuiet, b.badLast = t, 0, ""
	b.mu.Unlock()
	attrs := []any{"component", "memberlist", "error", text, "total", b.badInput.Load()}
	if quiet > 0 {
		attrs = append(attrs, "not_logged", quiet, "last_not_logged", last, "since", every.String())
	}
	// A warning, not an error: the node is fine, something that is not a
	// member (or uses another secret key) sent to its gossip port.
	b.log.Warn("refused unreadable gossip input (counted in mendmq_cluster_gossip_bad_packets_total; logged at most once per interval)", attrs...)
}

// badCount returns how many unreadable gossip packets and streams were
// refused.
func (b *logBridge) badCount() uint64 { return b.badInput.Load() }

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
