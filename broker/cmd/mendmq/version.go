package main

import (
	"fmt"
	"runtime"

	"github.com/mendmq/mendmq/broker"
)

func init() {
	register("version", "print the version", func(args []string) int {
		fmt.Printf("mendmq %s (%s %s/%s)\n", broker.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	})
}
