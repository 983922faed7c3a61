// Command fromstore is an example merge policy in Go that rebuilds entries
// from the database: the copy the map's MapStore holds on the node
// deciding the merge wins (package sdk/mapstore, sdk/ABI.md §9). See Merge.
// The C version is examples/policies/c/fromstore.
//
// Build:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -ldflags="-s -w" \
//	    -o fromstore.wasm ./examples/policies/fromstore
//
// and use it for a map with a store:
//
//	policies: {fromstore: {module: fromstore.wasm}}
//	maps: {orders: {merge_policy: fromstore, map_store: write-through}}
package main

import "github.com/mendmq/mendmq/sdk"

func init() { sdk.Register(Merge) }

func main() {}
