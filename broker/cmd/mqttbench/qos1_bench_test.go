package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mendmq/mendmq/broker/brokertest"
)

// BenchmarkQoS1 measures single-node QoS 1 throughput end to end: 20
// publisher/subscriber pairs (8 unacknowledged per publisher) against a
// mendmq node in this process for 2 s per run (generator and broker share
// the CPU, so compare runs of this benchmark only). delivered/s is the
// figure; the cases cover a client without Receive Maximum (3.1.1), a v5
// client at 65535 (no quota to keep) and a v5 client at 32 (broker/quirks
// .SendQuota counts every delivery). Run with -benchtime 1x -count N.
func BenchmarkQoS1(b *testing.B) {
	for _, tc := range []struct {
		name    string
		version byte
		rm      int
	}{
		{"v3", 4, 0},
		{"v5 receive maximum 65535", 5, 65535},
		{"v5 receive maximum 32", 5, 32},
	} {
		b.Run(tc.name, func(b *testing.B) {
			nd := brokertest.Start(b, brokertest.Config())
			var delivered, secs float64
			for i := 0; i < b.N; i++ {
				cfg := DefaultRunConfig()
				cfg.PubURLs = []string{nd.URL(0)}
				cfg.QoS, cfg.Version, cfg.ReceiveMaximum = 1, tc.version, tc.rm
				cfg.Pairs, cfg.Inflight, cfg.Duration = 20, 8, 2*time.Second
				cfg.ClientIDPrefix = fmt.Sprintf("b%d", i)
				res, err := Run(context.Background(), cfg, quietLog)
				if err != nil {
					b.Fatal(err)
				}
				if res.Lost != 0 || res.Duplicates != 0 || res.ErrorCount != 0 {
					b.Fatalf("lost %d duplicates %d errors %v", res.Lost, res.Duplicates, res.Errors)
				}
				delivered += res.DeliveredPerSec
				secs++
			}
			b.ReportMetric(delivered/secs, "delivered/s")
		})
	}
}
