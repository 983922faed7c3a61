// Command passthrough is mendmq's built-in `passthrough` merge policy as a WebAssembly
// module; see builtin.PassThrough for its semantics. Built by plugins/build-policies.sh:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -buildvcs=false -ldflags="-s -w" -o passthrough.wasm ./examples/policies/passthrough
package main

import (
	"github.com/mendmq/mendmq/examples/policies/builtin"
	"github.com/mendmq/mendmq/sdk"
)

func init() { sdk.Register(builtin.PassThrough) }

func main() {}
