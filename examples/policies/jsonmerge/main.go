// Command jsonmerge is an example custom merge policy in Go: it merges two
// JSON documents field by field, keeping for every field the side written
// last according to a per-field timestamp. See Merge for the format.
//
// Build and try it:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -ldflags="-s -w" \
//	    -o jsonmerge.wasm ./examples/policies/jsonmerge
//	mendmq policy test --module jsonmerge.wasm --map profiles \
//	    --merging  '{"key":"u1","value":"{\"name\":{\"v\":\"Bo\",\"ts\":2}}"}' \
//	    --existing '{"key":"u1","value":"{\"name\":{\"v\":\"Al\",\"ts\":1},\"age\":{\"v\":3,\"ts\":1}}"}'
package main

import "github.com/mendmq/mendmq/sdk"

func init() { sdk.Register(Merge) }

func main() {}
