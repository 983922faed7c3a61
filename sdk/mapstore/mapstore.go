// Package mapstore lets a merge policy read the MapStore: the copy of an
// entry that a map with maps.<name>.map_store keeps in the storage of the
// node deciding the merge — "rebuild the entry from the database".
//
//	stored, err := mapstore.Get(merging.Key)
//	switch {
//	case err == nil:
//		return sdk.Put(stored) // the stored copy wins
//	case errors.Is(err, mapstore.ErrNotFound), errors.Is(err, mapstore.ErrNoStore):
//		return sdk.TakeMerging() // or any other rule
//	default:
//		return sdk.Fail(err.Error()) // park it rather than guess
//	}
//
// In a module (GOOS=wasip1) Get calls the host function
// mendmq.stored_entry_v1 (sdk/ABI.md §9); a module imports it only if it
// calls Get, and a host without it refuses such a module at load, naming
// the import. The package is apart from package sdk so that policies which
// never read the store are not rebuilt differently by its presence (the
// built-in modules are checked in byte for byte). On any other GOOS — a
// policy's native unit tests — SetTest decides what Get answers.
package mapstore

import (
	"errors"

	"github.com/mendmq/mendmq/sdk"
)

// Import names the host function Get calls, as "module.function".
const Import = HostModule + "." + HostFunction

// The host function's module and name (sdk/ABI.md §9). The "_v1" is the
// import's own version: a changed contract gets a new name, so a module
// built against one the host does not have is refused at load instead of
// misreading the answer.
const (
	HostModule   = "mendmq"
	HostFunction = "stored_entry_v1"
)

// Status codes stored_entry_v1 returns instead of a size (sdk/ABI.md §9).
const (
	StatusNotFound   = -1 // the map's store has no entry under the key
	StatusNoStore    = -2 // the map keeps no store on this node
	StatusDenied     = -3 // not during a merge, or not a key being merged
	StatusTooLarge   = -4 // the encoded entry exceeds MaxEntrySize
	StatusError      = -5 // the store could not be read
	StatusBadPointer = -6 // the key or buffer lies outside the module's memory
)

// MaxEntrySize bounds an encoded stored entry (header, key, value,
// padding): the host answers StatusTooLarge beyond it. It leaves room for
// the largest map entry (a 4096-byte key and an 8 MiB value).
const MaxEntrySize = 16 << 20

// Errors of Get. ErrNotFound and ErrNoStore are answers a policy should
// expect; the others are faults to answer with sdk.Fail, so that the
// entry is parked for an operator rather than guessed at.
var (
	// ErrNotFound: the map keeps a MapStore on this node and it holds no
	// entry under the key.
	ErrNotFound = errors.New("mapstore: no stored entry for this key")
	// ErrNoStore: the map keeps no MapStore on the node deciding the merge
	// (maps.<name>.map_store unset, no storage.path, the map "$retained",
	// the load self-test "$smoke", a host given no store).
	ErrNoStore = errors.New("mapstore: the map has no map store on this node")
	// ErrDenied: Get was called outside the policy function (from an init
	// function, say) or for a key the current call is not merging.
	ErrDenied = errors.New("mapstore: denied: only the keys being merged, during a merge")
	// ErrTooLarge: the stored entry is larger than MaxEntrySize.
	ErrTooLarge = errors.New("mapstore: stored entry larger than 16 MiB")
	// ErrUnavailable: the store could not be read (an I/O error, an
	// unreadable entry), or the host's answer broke the ABI.
	ErrUnavailable = errors.New("mapstore: map store unavailable")
)

// Get returns the copy of key that the map's MapStore holds on the node
// deciding the merge, with the metadata it was stored with (LastStoredTime
// is when it was written there; Cost is len(key)+len(value)). key must be
// the key of an entry the current call merges — normally merging.Key — and
// Get must be called from the policy function.
//
// The entry's Key and Value alias a buffer of this package: valid until
// the next Get or until the policy returns, read-only. sdk.Put accepts
// the entry as it is (its result is copied when the policy returns); copy
// the bytes to keep them longer.
//
// Errors: ErrNotFound, ErrNoStore, ErrDenied, ErrTooLarge, ErrUnavailable.
func Get(key []byte) (*sdk.EntryView, error) { return std.get(key) }

// reader holds the buffer the host writes entries into and the view of
// the last one; both are reused by the next Get. A module instance is
// single-threaded, so one suffices.
type reader struct {
	buf  []byte
	view sdk.EntryView
	// host is hostStoredEntry in a module, the SetTest function elsewhere.
	host func(key, buf []byte) int32
}

var std = reader{host: hostStoredEntry}

// maxTries bounds the size-then-copy exchange: asked again at once for the
// same key, the host answers the same entry, so the second call fits.
const maxTries = 3

// get asks the host for key's stored copy into r.buf, growing it when the
// host answers with a larger size.
func (r *reader) get(key []byte) (*sdk.EntryView, error) {
	for range maxTries {
		n := r.host(key, r.buf[:cap(r.buf)])
		switch {
		case n < 0:
			return nil, statusErr(n)
		case n < sdk.EntryHeaderSize || n > MaxEntrySize:
			return nil, ErrUnavailable
		case int(n) <= cap(r.buf):
			if err := Decode(r.buf[:n], &r.view); err != nil {
				return nil, ErrUnavailable
			}
			return &r.view, nil
		}
		// Larger than the buffer, so nothing was written: make room.
		r.buf = make([]byte, min(max(int(n), 2*cap(r.buf), 512), MaxEntrySize))
	}
	return nil, ErrUnavailable
}

// statusErr maps a negative stored_entry_v1 result to its error.
func statusErr(n int32) error {
	switch n {
	case StatusNotFound:
		return ErrNotFound
	case StatusNoStore:
		return ErrNoStore
	case StatusDenied:
		return ErrDenied
	case StatusTooLarge:
		return ErrTooLarge
	}
	return ErrUnavailable // StatusError, StatusBadPointer, unknown codes
}

// ErrMalformed is returned (wrapped) by Decode.
var ErrMalformed = errors.New("mapstore: malformed stored entry")

// Decode decodes what stored_entry_v1 writes: exactly one EntryView in the
// layout of sdk/ABI.md §4 (a 72-byte header, the key, the value, zero
// padding to a multiple of 8). e's Key and Value alias buf.
func Decode(buf []byte, e *sdk.EntryView) error {
	if len(buf) < sdk.EntryHeaderSize {
		return malformed("shorter than the 72-byte header")
	}
	e.Cost = int64(le64(buf[0:]))
	e.Hits = int64(le64(buf[8:]))
	e.Version = int64(le64(buf[16:]))
	e.CreationTime = int64(le64(buf[24:]))
	e.LastAccessTime = int64(le64(buf[32:]))
	e.LastUpdateTime = int64(le64(buf[40:]))
	e.LastStoredTime = int64(le64(buf[48:]))
	e.ExpirationTime = int64(le64(buf[56:]))
	kl, vl := uint64(le32(buf[64:])), uint64(le32(buf[68:]))
	body := uint64(len(buf)) - sdk.EntryHeaderSize
	if (kl+vl+7)&^7 != body {
		return malformed("key and value lengths do not match the buffer")
	}
	rest := buf[sdk.EntryHeaderSize:]
	e.Key = rest[:kl:kl]
	e.Value = rest[kl : kl+vl : kl+vl]
	return nil
}

func malformed(why string) error { return &malformedError{why} }

type malformedError struct{ why string }

func (e *malformedError) Error() string { return "mapstore: malformed stored entry: " + e.why }
func (e *malformedError) Unwrap() error { return ErrMalformed }

func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}
func le64(b []byte) uint64 { return uint64(le32(b)) | uint64(le32(b[4:]))<<32 }

// SetTest decides what Get answers in native tests of a policy (any GOOS
// but wasip1): f returns the stored entry for key, or one of Get's
// errors. The entry is encoded and decoded as the host and Get do in a
// module. nil restores the default, ErrNoStore (a host without a store).
// In a module the host answers and SetTest has no effect. Not safe while
// a policy runs on another goroutine.
func SetTest(f func(key []byte) (*sdk.EntryView, error)) { testStore = f }

var testStore func(key []byte) (*sdk.EntryView, error)

// testStoredEntry answers from testStore under the host's contract.
func testStoredEntry(key, buf []byte) int32 {
	if testStore == nil {
		return StatusNoStore
	}
	e, err := testStore(key)
	switch {
	case errors.Is(err, ErrNotFound):
		return StatusNotFound
	case errors.Is(err, ErrNoStore):
		return StatusNoStore
	case errors.Is(err, ErrDenied):
		return StatusDenied
	case errors.Is(err, ErrTooLarge):
		return StatusTooLarge
	case err != nil || e == nil:
		return StatusError
	}
	n := sdk.EntrySize(e)
	if n > MaxEntrySize {
		return StatusTooLarge
	}
	if n <= len(buf) {
		sdk.AppendEntry(buf[:0], e)
	}
	return int32(n)
}
