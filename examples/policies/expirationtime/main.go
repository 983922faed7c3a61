// Command expirationtime is mendmq's built-in `expirationtime` merge policy as a WebAssembly
// module; see builtin.ExpirationTime for its semantics. Built by plugins/build-policies.sh:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -buildvcs=false -ldflags="-s -w" -o expirationtime.wasm ./examples/policies/expirationtime
package main

import (
	"github.com/mendmq/mendmq/examples/policies/builtin"
	"github.com/mendmq/mendmq/sdk"
)

func init() { sdk.Register(builtin.ExpirationTime) }

func main() {}
