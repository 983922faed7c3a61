//go:build !unix

package cluster_test

import (
	"testing"
	"time"
)

// cpuTime is not measured here: the benchmarks report 0 CPU.
func cpuTime(*testing.B) time.Duration { return 0 }
