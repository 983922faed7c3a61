package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/mendmq/mendmq/broker/brokertest"
)

// loopsEnv names the environment variable that sets how many runs
// TestReceiveMaximumNoDeadlock makes (default 30), e.g. 1000 by hand.
const loopsEnv = "MENDMQ_RM_LOOPS"

// TestReceiveMaximumNoDeadlock is the README's reproducer of mochi's
// send-quota deadlock, `mqttbench run -version 5 -qos 1 -inflight 8
// -pairs 4 -count 150` in a loop, against a mendmq node in this process:
// every run must deliver all 600 messages once and in order within its
// deadline. The runs cycle through the clients' Receive Maximum: 65535
// (mochi clamps it to mqtt.max_inflight, a positive quota: the path that
// deadlocked before broker/quirks switched mochi's quota off), 8 and 2
// (broker/quirks.SendQuota holds deliveries back), and through the raw and
// paho clients. With mochi's own quota left on, a run hangs within a few
// dozen (pinned in broker/mochix TestSendQuotaDeadlocks).
func TestReceiveMaximumNoDeadlock(t *testing.T) {
	loops := 30
	if v := os.Getenv(loopsEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive count", loopsEnv, v)
		}
		loops = n
	}
	nd := brokertest.Start(t, brokertest.Config())
	url := nd.URL(0)
	for i := range loops {
		rm := []int{65535, 8, 2}[i%3]
		client := []string{clientRaw, clientPaho}[i/3%2]
		cfg := testRunConfig(url)
		cfg.Version, cfg.QoS, cfg.Inflight, cfg.Pairs, cfg.Count = 5, 1, 8, 4, 150
		cfg.Duration = 20 * time.Second
		cfg.Client, cfg.ReceiveMaximum = client, rm
		cfg.ClientIDPrefix = fmt.Sprintf("rm%d", i)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		res, err := Run(ctx, cfg, quietLog)
		cancel()
		if err != nil {
			t.Fatalf("run %d (%s client, receive maximum %d): %v", i, client, rm, err)
		}
		if res.StoppedBy != "count" || res.Published != 600 || res.Delivered != 600 || res.Lost != 0 ||
			res.Duplicates != 0 || res.OutOfOrder != 0 || res.ErrorCount != 0 {
			t.Fatalf("run %d (%s client, receive maximum %d): stopped by %s, published %d, delivered %d, lost %d, "+
				"duplicates %d, out of order %d, errors %v", i, client, rm, res.StoppedBy, res.Published, res.Delivered,
				res.Lost, res.Duplicates, res.OutOfOrder, res.Errors)
		}
	}
}
