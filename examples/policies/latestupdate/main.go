// Command latestupdate is mendmq's built-in `latestupdate` merge policy as a WebAssembly
// module; see builtin.LatestUpdate for its semantics. Built by plugins/build-policies.sh:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -buildvcs=false -ldflags="-s -w" -o latestupdate.wasm ./examples/policies/latestupdate
package main

import (
	"github.com/mendmq/mendmq/examples/policies/builtin"
	"github.com/mendmq/mendmq/sdk"
)

func init() { sdk.Register(builtin.LatestUpdate) }

func main() {}
