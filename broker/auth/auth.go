// Package auth is the mochi hook that authenticates clients (bcrypt
// password hashes) and authorizes publishes and subscriptions with ordered
// ACL rules.
package auth

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"strings"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/crypto/bcrypt"
)

// Access is what an ACL rule grants.
type Access uint8

// Access values. Deny matches like any rule but grants nothing.
const (
	Deny Access = iota
	Read
	Write
	ReadWrite
)

// ParseAccess maps the config words read, write, readwrite and deny.
func ParseAccess(s string) (Access, error) {
	switch s {
	case "read":
		return Read, nil
	case "write":
		return Write, nil
	case "readwrite":
		return ReadWrite, nil
	case "deny":
		return Deny, nil
	}
	return Deny, fmt.Errorf("access %q is not one of read, write, readwrite, deny", s)
}

// Rule is one ACL rule. Username and ClientID, when set, restrict whom the
// rule applies to; Filter may contain %c (client id) and %u (username).
type Rule struct {
	Username string
	ClientID string
	Filter   string
	Access   Access
}

// Options configures the hook.
type Options struct {
	AllowAnonymous bool
	// Users maps username to bcrypt hash.
	Users map[string]string
	// Rules are checked in order; the first whose filter covers the topic
	// decides. No rules means allow all; rules but no match means deny.
	Rules []Rule
	// Denied, if set, is called for every refused ACL check (metrics).
	Denied func(write bool)
}

// Hook implements authentication and ACLs for mochi.
type Hook struct {
	mqtt.HookBase
	opts Options

	// cache remembers the last successful bcrypt check per user as a
	// keyed SHA-256 of the password (never the password itself), so a
	// reconnect storm does not cost 50-100 ms of CPU per CONNECT.
	mu    sync.Mutex
	cache map[string][sha256.Size]byte
	salt  [32]byte
}

var _ mqtt.Hook = (*Hook)(nil)

// New returns a hook for opts.
func New(opts Options) *Hook {
	h := &Hook{opts: opts, cache: map[string][sha256.Size]byte{}}
	_, _ = rand.Read(h.salt[:])
	return h
}

// ID names the hook.
func (h *Hook) ID() string { return "mendmq-auth" }

// Provides declares the hook methods this hook implements.
func (h *Hook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck}, []byte{b})
}

// OnConnectAuthenticate checks the username and password of CONNECT.
func (h *Hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	user := string(pk.Connect.Username)
	if user == "" {
		return h.opts.AllowAnonymous
	}
	hash, ok := h.opts.Users[user]
	if !ok {
		return false
	}
	mac := hmac.New(sha256.New, h.salt[:])
	mac.Write(pk.Connect.Password)
	var sum [sha256.Size]byte
	copy(sum[:], mac.Sum(nil))
	h.mu.Lock()
	cached, hit := h.cache[user]
	h.mu.Unlock()
	if hit && subtle.ConstantTimeCompare(cached[:], sum[:]) == 1 {
		return true
	}
	if bcrypt.CompareHashAndPassword([]byte(hash), pk.Connect.Password) != nil {
		return false
	}
	h.mu.Lock()
	h.cache[user] = sum
	h.mu.Unlock()
	return true
}

// OnACLCheck authorizes a publish (write) to topic or a subscription
// (read) to the filter topic.
func (h *Hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	ok := Allowed(h.opts.Rules, cl.ID, string(cl.Properties.Username), topic, write)
	if !ok && h.opts.Denied != nil {
		h.opts.Denied(write)
	}
	return ok
}

// Allowed evaluates rules for a client: for write, topic is a publish topic;
// for read, it is a subscription filter, which a rule's filter must cover
// entirely (a rule for a/+ does not allow subscribing to a/#).
func Allowed(rules []Rule, clientID, username, topic string, write bool) bool {
	if len(rules) == 0 {
		return true
	}
	if !write {
		// Authorize the filter a shared subscription subscribes to, not the
		// group name. Only for reads: a publish topic "$share/..." is an
		// ordinary topic name and must match a rule as written. mochi
		// recognises the prefix case-insensitively, so do the same.
		if parts := strings.SplitN(topic, "/", 3); len(parts) == 3 && strings.EqualFold(parts[0], "$share") {
			topic = parts[2]
		}
	}
	for _, r := range rules {
		if r.Username != "" && r.Username != username {
			continue
		}
		if r.ClientID != "" && r.ClientID != clientID {
			continue
		}
		f := strings.NewReplacer("%c", clientID, "%u", username).Replace(r.Filter)
		if (strings.Contains(r.Filter, "%c") && !substitutable(clientID)) || (strings.Contains(r.Filter, "%u") && !substitutable(username)) {
			// The rule does not apply: the substitution would widen it
			// (a/%u/# -> a//#, or a/+/# for a client that named itself "+").
			continue
		}
		if !Covers(f, topic) {
			continue
		}
		switch r.Access {
		case Deny:
			return false
		case ReadWrite:
			return true
		case Write:
			return write
		case Read:
			return !write
		}
	}
	return false
}

// substitutable reports whether a client id or username can replace %c or
// %u in a filter without changing its meaning: not empty, and no wildcard
// characters (clients choose their ids; mosquitto refuses the same).
func substitutable(s string) bool {
	return s != "" && !strings.ContainsAny(s, "+#")
}

// Covers reports whether every topic matched by sub is also matched by
// filter. For a plain topic (no wildcards) that is ordinary matching.
// Topics starting with '$' are not matched by a leading wildcard
// [MQTT-4.7.2-1].
func Covers(filter, sub string) bool {
	fl := strings.Split(filter, "/")
	sl := strings.Split(sub, "/")
	if len(sl) > 0 && strings.HasPrefix(sl[0], "$") && len(fl) > 0 && (fl[0] == "+" || fl[0] == "#") {
		return false
	}
	for i, f := range fl {
		if f == "#" {
			return true // covers this level and everything below, parent included
		}
		if i >= len(sl) {
			return false
		}
		s := sl[i]
		switch {
		case f == "+":
			if s == "#" {
				return false
			}
		case f != s:
			return false
		}
	}
	return len(sl) == len(fl)
}
