package routes

import "strings"

const sharePrefix = "$share/"

// ParseFilter splits a subscription filter into its shared-subscription
// group (empty for an ordinary subscription) and the topic filter proper,
// and reports whether the filter is valid:
//
//   - the filter is non-empty and has no U+0000 [MQTT-4.7.3-1, MQTT-4.7.3-2];
//   - '+' fills a whole level [MQTT-4.7.1-2]; '#' fills the last level
//     [MQTT-4.7.1-1];
//   - "$share/<group>/<filter>": the group is non-empty without '/', '+' or
//     '#', and the filter after it is valid [MQTT-4.8.2-1, MQTT-4.8.2-2].
func ParseFilter(filter string) (group, topicFilter string, ok bool) {
	if rest, shared := strings.CutPrefix(filter, sharePrefix); shared {
		g, f, found := strings.Cut(rest, "/")
		if !found || g == "" || strings.ContainsAny(g, "+#") || !validFilter(f) {
			return "", "", false
		}
		return g, f, true
	}
	if !validFilter(filter) {
		return "", "", false
	}
	return "", filter, true
}

func validFilter(f string) bool {
	if f == "" || strings.IndexByte(f, 0) >= 0 {
		return false
	}
	for rest := f; ; {
		level, tail, more := strings.Cut(rest, "/")
		if strings.ContainsAny(level, "+#") {
			if level == "#" {
				if more {
					return false
				}
			} else if level != "+" {
				return false
			}
		}
		if !more {
			return true
		}
		rest = tail
	}
}

// Matches reports whether the subscription filter (possibly
// "$share/<group>/<filter>") matches the topic name, with the '$' rule of
// [MQTT-4.7.2-1]: a wildcard first level does not match a topic starting
// with '$'. An invalid filter matches nothing. It is the Index's rule for
// one filter, without building an index.
func Matches(filter, topic string) bool {
	_, f, ok := ParseFilter(filter)
	if !ok || topic == "" {
		return false
	}
	if topic[0] == '$' && (f[0] == '+' || f[0] == '#') {
		return false
	}
	for {
		fl, frest, fmore := strings.Cut(f, "/")
		if fl == "#" {
			return true
		}
		tl, trest, tmore := strings.Cut(topic, "/")
		if fl != "+" && fl != tl {
			return false
		}
		switch {
		case !fmore && !tmore:
			return true
		case !tmore:
			// "a/#" matches "a": the parent level [MQTT-4.7.1-1].
			return frest == "#"
		case !fmore:
			return false
		}
		f, topic = frest, trest
	}
}
