package membership

import (
	"context"
	"log/slog"
	"strings"
)

// logBridge is the io.Writer behind memberlist's *log.Logger: it turns
// each "[LEVEL] memberlist: message" line into a slog record and passes
// lines about local probe failures to onSuspect, because memberlist
// reports suspicion nowhere else (see State Suspect).
type logBridge struct {
	log       *slog.Logger
	onSuspect func(name string)
}

// Prefix and suffix of memberlist's (v0.7.0 state.go probeNode) log line
// for a failed probe; a test fails if memberlist changes it.
const (
	suspectPrefix = "memberlist: Suspect "
	suspectSuffix = " has failed, no acks received"
)

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
	// Refused alive messages repeat with every gossip round; membership
	// logs each refusal itself, rate limited.
	if strings.HasPrefix(msg, "memberlist: ignoring alive message") ||
		strings.HasPrefix(msg, "memberlist: Conflicting address") {
		level = slog.LevelDebug
	}
	if b.log.Enabled(context.Background(), level) {
		b.log.Log(context.Background(), level, strings.TrimPrefix(msg, "memberlist: "), "component", "memberlist")
	}
	return len(p), nil
}
