package main

import (
	"os"

	"github.com/mendmq/mendmq/plugins/policycli"
)

// `mendmq policy test` is implemented and tested in plugins/policycli,
// next to the registry it drives. `mendmq policy list|reload` talk to a
// node, so they run as `mendmq ctl policy list|reload`: the same table and
// flags, plus the admin credentials (--token-file, --cacert, --cert/--key)
// and ctl's exit codes.
func init() {
	register("policy", policycli.Summary, func(args []string) int {
		if len(args) > 0 && (args[0] == "list" || args[0] == "reload") {
			return ctl(append([]string{"policy"}, args...), os.Stdout, os.Stderr)
		}
		return policycli.Run(args, os.Stdout, os.Stderr)
	})
}
