// Command higherhits is mendmq's built-in `higherhits` merge policy as a WebAssembly
// module; see builtin.HigherHits for its semantics. Built by plugins/build-policies.sh:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -buildvcs=false -ldflags="-s -w" -o higherhits.wasm ./examples/policies/higherhits
package main

import (
	"github.com/mendmq/mendmq/examples/policies/builtin"
	"github.com/mendmq/mendmq/sdk"
)

func init() { sdk.Register(builtin.HigherHits) }

func main() {}
