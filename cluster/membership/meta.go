package membership

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
)

// NodeMeta is the metadata a node announces to every member with its
// liveness. It is small (memberlist caps the encoding, ClusterName
// included, at 512 bytes) and changes rarely (UpdateMeta).
type NodeMeta struct {
	// DataAddr is the "host:port" of the node's data plane, which other
	// nodes dial for routed publishes, replication and RPCs.
	DataAddr string

	// Proto is the node's cluster protocol version, for admission checks
	// (Config.Admit) and rolling upgrades.
	Proto uint8

	// App is opaque to membership, at most a few hundred bytes.
	App []byte
}

// metaVersion is the version of the metadata encoding.
//
// Encoding, version 1 (integers big-endian):
//
//	[0]     version = 1
//	[1]     flags: bit 0 = the node is leaving (Leave in progress)
//	[2]     Proto
//	[3]     len(cluster name) = c, then c bytes
//	        len(DataAddr) as uint8 = d, then d bytes
//	        len(App) as uint16 = a, then a bytes
//
// Later versions only append fields, so a decoder accepts any version >=
// 1 and ignores bytes after the fields it knows; version 0 is invalid.
const metaVersion = 1

var errBadMeta = errors.New("membership: malformed node metadata")

// flagLeaving marks the metadata a node announces just before it leaves,
// so members can tell its departure (Left) from a failure (Dead):
// memberlist's leave notification does not say which it was.
const flagLeaving = 1 << 0

// wireMeta is the decoded metadata with the fields only membership uses.
type wireMeta struct {
	cluster string
	flags   uint8
	NodeMeta
}

// encodeMeta encodes m with the cluster name. Over-long fields are
// truncated here; Config.Validate and UpdateMeta reject them first.
func encodeMeta(cluster string, m NodeMeta) []byte {
	return encodeWireMeta(wireMeta{cluster: cluster, NodeMeta: m})
}

func encodeWireMeta(w wireMeta) []byte {
	cluster, m := w.cluster, w.NodeMeta
	cluster = truncate(cluster, 255)
	addr := truncate(m.DataAddr, 255)
	app := m.App
	if len(app) > 65535 {
		app = app[:65535]
	}
	b := make([]byte, 0, 4+len(cluster)+1+len(addr)+2+len(app))
	b = append(b, metaVersion, w.flags, m.Proto, byte(len(cluster)))
	b = append(b, cluster...)
	b = append(b, byte(len(addr)))
	b = append(b, addr...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(app)))
	b = append(b, app...)
	return b
}

// decodeMeta is the inverse of encodeWireMeta. The returned App does not
// alias b.
func decodeMeta(b []byte) (wireMeta, error) {
	var w wireMeta
	if len(b) < 4 || b[0] == 0 {
		return w, fmt.Errorf("%w: %d bytes", errBadMeta, len(b))
	}
	w.flags, w.Proto = b[1], b[2]
	r := b[3:]
	take := func(n int) ([]byte, bool) {
		if n > len(r) {
			return nil, false
		}
		out := r[:n]
		r = r[n:]
		return out, true
	}
	lc, _ := take(1)
	c, ok := take(int(lc[0]))
	if !ok {
		return wireMeta{}, fmt.Errorf("%w: truncated cluster name", errBadMeta)
	}
	ld, ok := take(1)
	if !ok {
		return wireMeta{}, fmt.Errorf("%w: truncated data address", errBadMeta)
	}
	d, ok := take(int(ld[0]))
	if !ok {
		return wireMeta{}, fmt.Errorf("%w: truncated data address", errBadMeta)
	}
	la, ok := take(2)
	if !ok {
		return wireMeta{}, fmt.Errorf("%w: truncated app data", errBadMeta)
	}
	a, ok := take(int(binary.BigEndian.Uint16(la)))
	if !ok {
		return wireMeta{}, fmt.Errorf("%w: truncated app data", errBadMeta)
	}
	w.cluster = string(c)
	w.DataAddr = string(d)
	if len(a) > 0 {
		w.App = append([]byte(nil), a...)
	}
	return w, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func defaultNodeName() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "mendmq"
	}
	return h
}

// leavingNoticeTag starts a direct leave notice (user message), so that
// a later message kind can be told apart.
const leavingNoticeTag = 'L'

// encodeLeavingNotice encodes the direct leave notice of node: tag, then
// the node name (at most 255 bytes, as memberlist names are short).
func encodeLeavingNotice(node string) []byte {
	node = truncate(node, 255)
	b := make([]byte, 0, 2+len(node))
	b = append(b, leavingNoticeTag, byte(len(node)))
	return append(b, node...)
}

// decodeLeavingNotice is the inverse of encodeLeavingNotice.
func decodeLeavingNotice(b []byte) (string, error) {
	if len(b) < 2 || b[0] != leavingNoticeTag || int(b[1]) != len(b)-2 || b[1] == 0 {
		return "", fmt.Errorf("membership: malformed leave notice (%d bytes)", len(b))
	}
	return string(b[2:]), nil
}
