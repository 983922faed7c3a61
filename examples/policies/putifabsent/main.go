// Command putifabsent is mendmq's built-in `putifabsent` merge policy as a WebAssembly
// module; see builtin.PutIfAbsent for its semantics. Built by plugins/build-policies.sh:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -buildvcs=false -ldflags="-s -w" -o putifabsent.wasm ./examples/policies/putifabsent
package main

import (
	"github.com/mendmq/mendmq/examples/policies/builtin"
	"github.com/mendmq/mendmq/sdk"
)

func init() { sdk.Register(builtin.PutIfAbsent) }

func main() {}
