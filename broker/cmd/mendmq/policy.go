package main

import (
	"os"

	"github.com/mendmq/mendmq/plugins/policycli"
)

// `mendmq policy test|list|reload` — implemented and tested in
// plugins/policycli, next to the registry it drives.
func init() {
	register("policy", policycli.Summary, func(args []string) int {
		return policycli.Run(args, os.Stdout, os.Stderr)
	})
}
