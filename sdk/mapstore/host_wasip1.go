//go:build wasip1

package mapstore

import (
	"runtime"
	"unsafe"
)

// storedEntryV1 is the host function of sdk/ABI.md §9: it writes key's
// stored entry at bufPtr if it fits in bufCap bytes and returns its size,
// or a negative status.
//
//go:wasmimport mendmq stored_entry_v1
func storedEntryV1(keyPtr, keyLen, bufPtr, bufCap uint32) int32

// hostStoredEntry asks the host for key's stored entry into buf.
func hostStoredEntry(key, buf []byte) int32 {
	n := storedEntryV1(addr(key), uint32(len(key)), addr(buf), uint32(len(buf)))
	// The host reached key and buf through their addresses only.
	runtime.KeepAlive(key)
	runtime.KeepAlive(buf)
	return n
}

// addr is the linear-memory offset of b's first byte (0 for an empty b).
func addr(b []byte) uint32 { return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }
