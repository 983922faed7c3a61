// Command latestaccess is mendmq's built-in `latestaccess` merge policy as a WebAssembly
// module; see builtin.LatestAccess for its semantics. Built by plugins/build-policies.sh:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -buildvcs=false -ldflags="-s -w" -o latestaccess.wasm ./examples/policies/latestaccess
package main

import (
	"github.com/mendmq/mendmq/examples/policies/builtin"
	"github.com/mendmq/mendmq/sdk"
)

func init() { sdk.Register(builtin.LatestAccess) }

func main() {}
