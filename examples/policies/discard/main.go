// Command discard is mendmq's built-in `discard` merge policy as a WebAssembly
// module; see builtin.Discard for its semantics. Built by plugins/build-policies.sh:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -buildvcs=false -ldflags="-s -w" -o discard.wasm ./examples/policies/discard
package main

import (
	"github.com/mendmq/mendmq/examples/policies/builtin"
	"github.com/mendmq/mendmq/sdk"
)

func init() { sdk.Register(builtin.Discard) }

func main() {}
