package statuspage_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/eclipse/paho.golang/paho"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/cluster"
)

// UpdateEnv names the environment variable that, set to 1, makes
// TestStatusPageInBrowser refresh the screenshot the README shows
// (examples/deploy/status-page.png).
const UpdateEnv = "MENDMQ_UPDATE_SCREENSHOT"

// browser finds a Chromium binary, or skips the test.
func browser(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("statuspage: no Chromium found, the status page is not tested in a browser " +
		"(apt-get install -y chromium; .ci/run installs it)")
	return ""
}

// startCluster starts n in-process nodes (n1..nN) seeded with the first
// and waits until each sees all alive with the data plane connected.
func startCluster(t *testing.T, n int) []*brokertest.Node {
	t.Helper()
	var nodes []*brokertest.Node
	var seed string
	for i := 1; i <= n; i++ {
		cfg := brokertest.Config()
		cfg.Node.Name = fmt.Sprintf("n%d", i)
		cfg.Cluster = cluster.LoopbackConfig()
		if seed != "" {
			cfg.Cluster.Seeds = []string{seed}
		}
		nd := brokertest.Start(t, cfg)
		if seed == "" {
			seed = nd.Cluster().Status().Members[0].GossipAddr
		}
		nodes = append(nodes, nd)
	}
	brokertest.Eventually(t, fmt.Sprintf("%d nodes to see each other alive and connected", n), func() bool {
		for _, nd := range nodes {
			st := nd.Cluster().Status()
			if len(st.Members) != n {
				return false
			}
			for _, m := range st.Members {
				if m.State != "alive" || !m.Self && !m.Reachable {
					return false
				}
			}
		}
		return true
	})
	return nodes
}

// TestStatusPageInBrowser opens the status page of a live three-node
// cluster in headless Chromium: it lists the three members alive, draws
// the message-rate chart from live traffic, shows the policies, and fits
// a phone-width screen without sideways scrolling. Screenshots go to the
// test's temporary directory (and to examples/deploy with
// MENDMQ_UPDATE_SCREENSHOT=1).
func TestStatusPageInBrowser(t *testing.T) {
	exe := browser(t)
	nodes := startCluster(t, 3)

	// Cross-node traffic for the chart and the per-peer counters.
	sub := brokertest.MustV5(t, nodes[1].URL(0), "chart-sub")
	sub.MustSub("chart/#", 0)
	pub := brokertest.MustV5(t, nodes[0].URL(0), "chart-pub")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				_, _ = pub.Publish(context.Background(), newPublish("chart/x"))
			}
		}
	}()
	t.Cleanup(func() { close(stop); wg.Wait() })
	go func() { // drain
		for {
			select {
			case <-stop:
				return
			case <-sub.Msgs():
			}
		}
	}()

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.NoSandbox, // CI runs as root
		chromedp.DisableGPU,
		chromedp.WindowSize(1280, 1000),
	)
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	url := "http://" + nodes[0].AdminAddr() + "/?poll=300"
	err := chromedp.Do(ctx,
		chromedp.Navigate(url),
		chromedp.Poll[chromedp.Void](`document.body.dataset.loaded === "true"`),
		chromedp.Poll[chromedp.Void](`document.querySelectorAll('#members tbody tr[data-state="alive"]').length === 3`),
		chromedp.Poll[chromedp.Void](fmt.Sprintf(`samples.length >= %d && samples[samples.length-1].in > 0`, samplesWanted())),
	)
	if err != nil {
		t.Fatalf("status page in Chromium: %v", err)
	}
	members := run(t, ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll('#members tbody tr')].map(r => r.dataset.member + " " + r.dataset.state)`))
	if got := strings.Join(members, ", "); got != "n1 alive, n2 alive, n3 alive" {
		t.Errorf("members on the page: %q, want n1, n2, n3 alive", got)
	}
	// Some pixel of the chart is drawn in the 'in' colour (#1f6feb).
	chart := run(t, ctx, chromedp.Evaluate[bool](`(() => { const c = document.getElementById('rates');
		const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
		for (let i = 0; i < d.length; i += 4) if (d[i+3] > 128 && d[i+2] > 200 && d[i] < 80) return true;
		return false })()`))
	if !chart {
		t.Error("the rate chart has no line in the 'in' colour")
	}
	if policies := run(t, ctx, chromedp.Text(chromedp.CSS(`#policies tbody`))); !strings.Contains(policies, "latestupdate") {
		t.Errorf("policies table: %q, want latestupdate", policies)
	}
	if e := run(t, ctx, chromedp.Evaluate[string](`document.getElementById('error').hidden ? "" : document.getElementById('error').textContent`)); e != "" {
		t.Errorf("the page shows an error: %s", e)
	}
	desktop := run(t, ctx, chromedp.FullScreenshot(100))

	// Phone width: the page itself must not scroll sideways (wide tables
	// scroll inside their cards).
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(390, 844)); err != nil {
		t.Fatal(err)
	}
	if w := run(t, ctx, chromedp.Evaluate[int](`document.documentElement.scrollWidth`)); w > 390 {
		t.Errorf("at 390 px the page is %d px wide", w)
	}
	phone := run(t, ctx, chromedp.FullScreenshot(100))

	dir := t.TempDir()
	for name, img := range map[string][]byte{"status-page.png": desktop, "status-page-phone.png": phone} {
		if err := os.WriteFile(filepath.Join(dir, name), img, 0o644); err != nil {
			t.Fatal(err)
		}
		if os.Getenv(UpdateEnv) == "1" {
			if err := os.WriteFile(filepath.Join("..", "..", "..", "examples", "deploy", name), img, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("screenshots in %s", dir)
}

func newPublish(topic string) *paho.Publish {
	return &paho.Publish{Topic: topic, QoS: 0, Payload: []byte("x")}
}

// run runs one action and fails the test on error.
func run[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	return v
}

// samplesWanted is how many rate samples the chart must have: a few for
// the check, more for a screenshot worth showing.
func samplesWanted() int {
	if os.Getenv(UpdateEnv) == "1" {
		return 30
	}
	return 3
}
