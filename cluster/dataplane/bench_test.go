package dataplane

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// countingHandler counts frames and signals when want is reached.
type countingHandler struct {
	n    atomic.Int64
	want atomic.Int64
	done chan struct{}
}

func (h *countingHandler) HandleFrame(string, uint8, []byte) {
	if h.n.Add(1) == h.want.Load() {
		h.done <- struct{}{}
	}
}

func (h *countingHandler) HandleCall(_ string, _ uint8, p []byte) ([]byte, error) { return p, nil }

// BenchmarkSend measures one-way frames from one node to another over
// loopback TCP, end to end (queued by Send until handled by the peer).
//
//	go test -run XXX -bench BenchmarkSend -benchtime 2000000x ./cluster/dataplane/
func BenchmarkSend(b *testing.B) {
	for _, size := range []int{64, 1024} {
		for _, senders := range []int{1, 4} {
			b.Run(fmt.Sprintf("payload=%d/senders=%d", size, senders), func(b *testing.B) {
				h := &countingHandler{done: make(chan struct{}, 1)}
				src := startPlane(b, "a", newHandler(), nil)
				dst := startPlane(b, "b", h, nil)
				link(b, src, dst)
				payload := make([]byte, size)
				h.want.Store(int64(b.N))
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.ResetTimer()
				start := time.Now()
				ctx := context.Background()
				per := b.N / senders
				errc := make(chan error, senders)
				for s := range senders {
					n := per
					if s == 0 {
						n += b.N % senders
					}
					go func() {
						for range n {
							if err := src.SendWait(ctx, "b", 1, payload); err != nil {
								errc <- err
								return
							}
						}
						errc <- nil
					}()
				}
				for range senders {
					if err := <-errc; err != nil {
						b.Fatal(err)
					}
				}
				select {
				case <-h.done:
				case <-time.After(time.Minute):
					b.Fatalf("received %d of %d frames", h.n.Load(), b.N)
				}
				el := time.Since(start)
				b.ReportMetric(float64(b.N)/el.Seconds(), "frames/s")
			})
		}
	}
}

// BenchmarkCall measures request/response round trips with 1 and 16
// concurrent callers.
func BenchmarkCall(b *testing.B) {
	for _, callers := range []int{1, 16} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			src := startPlane(b, "a", newHandler(), nil)
			dst := startPlane(b, "b", &countingHandler{done: make(chan struct{}, 1)}, nil)
			link(b, src, dst)
			payload := make([]byte, 64)
			b.SetParallelism(callers)
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := src.Call(context.Background(), "b", 1, payload); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "calls/s")
		})
	}
}
