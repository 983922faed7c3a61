package dataplane

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// writeCountNetwork is TCPNetwork counting the Write calls (about one
// write syscall each) of every connection it makes or accepts.
type writeCountNetwork struct {
	writes *atomic.Int64
}

type writeCountConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c writeCountConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

type writeCountListener struct {
	net.Listener
	writes *atomic.Int64
}

func (l writeCountListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return writeCountConn{c, l.writes}, nil
}

func (n writeCountNetwork) Listen(addr string) (net.Listener, error) {
	ln, err := TCPNetwork{}.Listen(addr)
	if err != nil {
		return nil, err
	}
	return writeCountListener{ln, n.writes}, nil
}

func (n writeCountNetwork) Dial(ctx context.Context, addr string) (net.Conn, error) {
	c, err := TCPNetwork{}.Dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	return writeCountConn{c, n.writes}, nil
}

// deepHandler answers calls after using about depth bytes of stack, like
// the cluster's forward handler (a PUBLISH decoded and injected into the
// MQTT broker by value, several KiB deep).
type deepHandler struct{ depth int }

func (deepHandler) HandleFrame(string, uint8, []byte) {}

func (h deepHandler) HandleCall(_ string, _ uint8, p []byte) ([]byte, error) {
	if stackUser(h.depth/1024, p[0]) == 0xff {
		return p, nil
	}
	return nil, nil
}

// stackUser recurses n times with a 1 KiB frame each.
//
//go:noinline
func stackUser(n int, seed byte) byte {
	var buf [1000]byte
	buf[int(seed)%len(buf)] = seed
	if n <= 0 {
		return buf[0]
	}
	return stackUser(n-1, seed+1) ^ buf[int(seed)%len(buf)]
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkCallLoad measures what the cluster's QoS 1 forwarding does:
// many callers (one publisher each), every one waiting for its reply
// before the next call, with a handler that needs a deep stack. It
// reports the process's CPU time per call (both nodes, both directions)
// and the socket writes per call (both directions), the costs that
// bound throughput on a busy host, besides the rate.
//
//	go test -run XXX -bench CallLoad -benchtime 200000x -count 5 ./cluster/dataplane/
func BenchmarkCallLoad(b *testing.B) {
	for _, tc := range []struct{ callers, depth int }{{1, 0}, {50, 0}, {50, 16 << 10}} {
		b.Run(fmt.Sprintf("callers=%d/stack=%dK", tc.callers, tc.depth>>10), func(b *testing.B) {
			var writes atomic.Int64
			nw := func(c *Config) { c.Network = writeCountNetwork{&writes} }
			src := startPlane(b, "a", newHandler(), nw)
			dst := startPlane(b, "b", deepHandler{tc.depth}, nw)
			link(b, src, dst)
			payload := make([]byte, 100)
			var next atomic.Int64
			var wg sync.WaitGroup
			errc := make(chan error, tc.callers)
			b.ReportAllocs()
			b.ResetTimer()
			w0, c0, start := writes.Load(), cpuTime(), time.Now()
			for range tc.callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ctx := context.Background()
					for next.Add(1) <= int64(b.N) {
						cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
						_, err := src.Call(cctx, "b", 1, payload)
						cancel()
						if err != nil {
							errc <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			el, cpu, w := time.Since(start), cpuTime()-c0, writes.Load()-w0
			b.StopTimer()
			select {
			case err := <-errc:
				b.Fatal(err)
			default:
			}
			b.ReportMetric(float64(b.N)/el.Seconds(), "calls/s")
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/call")
			b.ReportMetric(float64(w)/float64(b.N), "writes/call")
		})
	}
}
