// Package sdk is what a mendmq merge-policy author imports.
//
// A policy is one Go function, registered from an init function of a main
// package and compiled to a WebAssembly module with the standard toolchain:
//
//	package main
//
//	import "github.com/mendmq/mendmq/sdk"
//
//	func init() { sdk.Register(merge) }
//
//	func merge(mapName string, merging, existing *sdk.EntryView) sdk.Result {
//		if existing == nil || merging.Hits >= existing.Hits {
//			return sdk.TakeMerging()
//		}
//		return sdk.KeepExisting()
//	}
//
//	func main() {}
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -ldflags="-s -w" -o policy.wasm .
//
// When built for wasip1 the package exports mendmq_abi_version,
// mendmq_alloc, merge and merge_batch (see sdk/ABI.md). On any other GOOS
// it builds without exports, so the codec and dispatch logic (and a
// policy's own unit tests) run natively with go test.
//
// Retained MQTT messages are merged under the map name RetainedMap
// ("$retained"); DecodeRetained reads their values (sdk/ABI.md §8).
//
// The package is its own module, github.com/mendmq/mendmq/sdk, with no
// dependencies and go 1.24 (the first Go with //go:wasmexport). It is
// versioned with the ABI: Version's major number is ABIVersion. sdk/README.md
// shows the go.mod a policy needs; `mendmq policy new NAME --lang go`
// writes one.
//
// A policy must be deterministic: the module gets no file system, no
// network, a frozen clock and a fixed random seed, and every node must reach
// the same answer for the same inputs.
package sdk
