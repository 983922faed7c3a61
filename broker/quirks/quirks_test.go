package quirks_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mendmq/mendmq/broker/brokertest"
)

// TestResumeUnderLoad: a persistent QoS 2 subscriber reconnects (taking
// its own session over) again and again while a publisher streams QoS 2
// messages at it. Every acknowledged message reaches the client on some
// connection, no connection gets one twice, and no connection sees a
// PUBLISH before its CONNACK. Without the hook, mochi v2.7.9 lost the
// messages queued for the old connection after its queue was cloned, and
// wrote publishes before the CONNACK (the client failed to connect).
// With reconnects this close together, the next takeover often starts
// while the hook is still re-queuing the previous one's messages.
//
// With a Receive Maximum, each resend after a CONNACK is cut to it and the
// rest of the queue waits in broker/quirks.SendQuota, which also sees
// messages queued while the resend runs.
func TestResumeUnderLoad(t *testing.T) {
	for _, rm := range []uint16{0, 4} {
		t.Run(fmt.Sprintf("receive maximum %d", rm), func(t *testing.T) {
			resumeUnderLoad(t, 4, 250, 20, 10*time.Millisecond, rm)
		})
	}
}

// resumeStressEnv names the environment variable that runs
// TestResumeUnderLoadStress: "publishers,messages,reconnects,pause".
const resumeStressEnv = "MENDMQ_RESUME_STRESS"

// TestResumeUnderLoadStress is TestResumeUnderLoad with the load set by
// $MENDMQ_RESUME_STRESS, e.g. "8,250,40,2ms" (a fifth field sets the
// subscriber's Receive Maximum: "8,250,40,2ms,4"), to loop under CPU
// contention (go test -run Stress -count 100 with busy loops running):
// the session takeover races show only when goroutines get preempted.
func TestResumeUnderLoadStress(t *testing.T) {
	v := os.Getenv(resumeStressEnv)
	if v == "" {
		t.Skipf("set %s=publishers,messages,reconnects,pause (e.g. 8,250,40,2ms)", resumeStressEnv)
	}
	var pubs, total, hops int
	var pause string
	var rm uint16
	f := strings.Split(v, ",")
	if len(f) == 5 {
		if _, err := fmt.Sscanf(f[4], "%d", &rm); err != nil {
			t.Fatalf("%s=%q: %v", resumeStressEnv, v, err)
		}
		v = strings.Join(f[:4], ",")
	}
	if _, err := fmt.Sscanf(strings.ReplaceAll(v, ",", " "), "%d %d %d %s", &pubs, &total, &hops, &pause); err != nil {
		t.Fatalf("%s=%q: %v", resumeStressEnv, v, err)
	}
	d, err := time.ParseDuration(pause)
	if err != nil {
		t.Fatalf("%s=%q: %v", resumeStressEnv, v, err)
	}
	resumeUnderLoad(t, pubs, total, hops, d, rm)
}

// resumeUnderLoad runs pubs publishers of total QoS 2 messages each while
// the subscriber (Receive Maximum rm, 0: not sent) reconnects hops times,
// pause apart.
func resumeUnderLoad(t *testing.T, pubs, total, hops int, pause time.Duration, rm uint16) {
	nd := brokertest.Start(t, brokertest.Config())
	url := nd.URL(0)
	const id = "resumer"
	opts := brokertest.V5Options{KeepSession: true, SessionExpiry: 300, ReceiveMaximum: rm}

	first := brokertest.MustV5(t, url, id, opts)
	first.MustSub("rs/#", 2)
	conns := []*brokertest.V5{first}

	var mu sync.Mutex
	var acked []string
	var pubErr error
	done := make(chan struct{})
	var wg sync.WaitGroup
	for j := range pubs {
		pub := brokertest.MustV5(t, url, fmt.Sprintf("rs-pub-%d", j))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range total {
				p := fmt.Sprintf("m-%d-%d", j, k)
				ctx, cancel := context.WithTimeout(context.Background(), brokertest.Timeout)
				resp, err := pub.Publish(ctx, &paho.Publish{Topic: "rs/x", QoS: 2, Payload: []byte(p)})
				cancel()
				mu.Lock()
				if err != nil {
					pubErr = err
					mu.Unlock()
					return
				}
				if resp.ReasonCode < 0x80 {
					acked = append(acked, p)
				}
				mu.Unlock()
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()
	for hop := 0; hop < hops; hop++ {
		select {
		case <-done:
		case <-time.After(pause):
		}
		c, err := brokertest.ConnectV5(t, url, id, opts)
		if err != nil {
			t.Fatalf("reconnect %d under load: %v", hop, err)
		}
		if !c.Connack.SessionPresent {
			t.Fatalf("reconnect %d: session present = false", hop)
		}
		conns = append(conns, c)
	}
	wg.Wait()
	if pubErr != nil {
		t.Fatal(pubErr)
	}

	last := conns[len(conns)-1]
	got := make([]map[string]int, len(conns))
	detail := map[string][]string{}
	note := func(i int, m *paho.Publish) {
		k := fmt.Sprintf("%d/%s", i, m.Payload)
		detail[k] = append(detail[k], fmt.Sprintf("id=%d dup=%v", m.PacketID, m.Duplicate()))
	}
	drain := func(i int) {
		for {
			select {
			case m := <-conns[i].Msgs():
				got[i][string(m.Payload)]++
				note(i, m)
			default:
				return
			}
		}
	}
	for i := range conns {
		got[i] = map[string]int{}
		drain(i)
	}
	missing := func() []string {
		var out []string
		for _, p := range acked {
			n := 0
			for i := range got {
				n += got[i][p]
			}
			if n == 0 {
				out = append(out, p)
			}
		}
		return out
	}
	// A small Receive Maximum delivers the backlog a few messages per
	// round trip: wait for as long as messages keep coming (bounded).
	quiet := time.NewTimer(brokertest.Timeout)
	defer quiet.Stop()
	end := time.After(12 * brokertest.Timeout)
	for len(missing()) > 0 {
		select {
		case m := <-last.Msgs():
			got[len(got)-1][string(m.Payload)]++
			note(len(got)-1, m)
			quiet.Reset(brokertest.Timeout)
		case <-quiet.C:
			miss := missing()
			t.Fatalf("%d of %d acknowledged messages never reached the client: %v", len(miss), len(acked), miss[:min(len(miss), 20)])
		case <-end:
			miss := missing()
			t.Fatalf("%d of %d acknowledged messages still missing after %v: %v", len(miss), len(acked), 12*brokertest.Timeout, miss[:min(len(miss), 20)])
		}
	}
	brokertest.MustV5(t, url, "rs-end").MustPub("rs/end", 1, false, "end")
	for _, m := range last.Until("rs/end") {
		got[len(got)-1][string(m.Payload)]++
		note(len(got)-1, m)
	}
	for i := range got {
		for p, n := range got[i] {
			if n > 1 {
				t.Errorf("connection %d got %s %d times: %v", i, p, n, detail[fmt.Sprintf("%d/%s", i, p)])
			}
		}
	}
}
