// Package storage persists retained messages and persistent sessions
// (subscriptions and queued QoS1/2 messages) in a bbolt file, through
// mochi's bolt storage hook.
//
// mochi v2.7.9's bolt hook does not save the packet id of an inflight
// message, so a restored session fails on reconnect with "resend inflight:
// protocol violation: missing packet id" and its queued messages never
// arrive. The id is part of the record's key (IFM_<client>:<id>), so Hook
// restores it from there on load. (The badger and pebble hooks save it.)
//
// The bolt hook also saves mochi's $SYS counters every sys_interval and
// reads them back at start, logging "failed to get data ... key=SYS" at
// ERROR when the file is new (the key is missing, which it then treats as
// fine). mochi restores those counters only with its
// RestoreSysInfoOnRestart compatibility flag, which mendmq does not set:
// like the Prometheus counters they restart from zero. So Hook neither
// saves nor reads them, and a fresh start logs no error.
package storage

import (
	"strconv"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
	"go.etcd.io/bbolt"
)

// Hook is mochi's bolt hook with inflight packet ids restored on load.
type Hook struct {
	*bolt.Hook
}

var _ mqtt.Hook = (*Hook)(nil)

// New returns the hook and its mochi config for the bbolt file at path.
// lockTimeout bounds the wait for the file lock held by another process.
func New(path string, lockTimeout time.Duration) (*Hook, *bolt.Options) {
	return &Hook{Hook: new(bolt.Hook)}, &bolt.Options{Path: path, Options: &bbolt.Options{Timeout: lockTimeout}}
}

// Provides declares the handled hook methods: the bolt hook's, less the
// $SYS counters (see the package comment).
func (h *Hook) Provides(b byte) bool {
	if b == mqtt.StoredSysInfo || b == mqtt.OnSysInfoTick {
		return false
	}
	return h.Hook.Provides(b)
}

// StoredInflightMessages returns the stored inflight messages with their
// packet ids.
func (h *Hook) StoredInflightMessages() ([]storage.Message, error) {
	v, err := h.Hook.StoredInflightMessages()
	for i := range v {
		if v[i].PacketID != 0 {
			continue
		}
		if j := strings.LastIndexByte(v[i].ID, ':'); j >= 0 {
			if id, perr := strconv.ParseUint(v[i].ID[j+1:], 10, 16); perr == nil {
				v[i].PacketID = uint16(id)
			}
		}
	}
	return v, err
}
