//go:build wasip1

package sdk

import "unsafe"

// The exports below are the module side of ABI version 1 (sdk/ABI.md). They
// are compiled into every wasip1 program that imports this package.

//go:wasmexport mendmq_abi_version
func exportABIVersion() uint32 { return ABIVersion }

//go:wasmexport mendmq_alloc
func exportAlloc(size uint32) uint32 {
	b := std.alloc(size)
	if len(b) == 0 {
		return 0
	}
	return addr(b)
}

//go:wasmexport merge
func exportMerge(ptr, n uint32) uint64 { return std.serve(ptr, n, false) }

//go:wasmexport merge_batch
func exportMergeBatch(ptr, n uint32) uint64 { return std.serve(ptr, n, true) }

// serve handles a request the host wrote into the input buffer. The host may
// only pass the buffer alloc returned; anything else is refused with 0, which
// the host treats as a failed merge.
func (d *dispatcher) serve(ptr, n uint32, batch bool) uint64 {
	if cap(d.in) == 0 || ptr != addr(d.in) || uint64(n) > uint64(cap(d.in)) {
		return 0
	}
	out, err := d.handle(d.in[:n], batch)
	if err != nil || len(out) == 0 {
		return 0
	}
	return packResult(addr(out), uint32(len(out)))
}

// addr is the linear-memory offset of b's first byte.
func addr(b []byte) uint32 { return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }
