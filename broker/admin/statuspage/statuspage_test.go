package statuspage_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/eclipse/paho.golang/paho"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/config"
	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/cluster/clustertest"
	"github.com/mendmq/mendmq/plugins"
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
func startCluster(t *testing.T, n int, mutate func(name string, cfg *config.Config)) []*brokertest.Node {
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
		if mutate != nil {
			mutate(cfg.Node.Name, &cfg)
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
	// n2 has a policy that fails on demand, to park conflicts; the page
	// is n1's, which lists and resolves them on n2.
	nodes := startCluster(t, 3, func(name string, cfg *config.Config) {
		if name == "n2" {
			cfg.Plugins.Policies["trap"] = plugins.PolicyConfig{Module: filepath.Join("..", "..", "..", "plugins", "testdata", "hostile", "trap.wasm")}
			cfg.Plugins.Maps["evil"] = plugins.MapConfig{MergePolicy: "trap"}
			cfg.Plugins.MapsInUse = plugins.AnyMap // "evil" is merged only by this test's direct calls
		}
	})
	mctx, mcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer mcancel()
	for _, key := range []string{"boom-1", "boom-2"} {
		if _, err := nodes[1].Policies().Merge(mctx, "evil", &plugins.EntryView{Key: []byte(key), Value: []byte("v-" + key)}, nil); err != nil {
			t.Logf("merge with the trapping policy: %v", err)
		}
	}
	if len(nodes[1].Policies().Conflicts()) != 2 {
		t.Fatalf("want 2 conflicts parked: %+v", nodes[1].Policies().Conflicts())
	}

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

	ctx := newBrowser(t, exe)

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
	if c := run(t, ctx, chromedp.Text(chromedp.CSS(`#conflicts tbody`))); !strings.Contains(c, "evil") || !strings.Contains(c, "trap") || !strings.Contains(c, "n2/") {
		t.Errorf("conflicts table: %q, want n2's parked conflicts of map evil, policy trap", c)
	}
	desktop := run(t, ctx, chromedp.FullScreenshot(100))

	// "take merging" writes the first parked entry into the map, "drop"
	// discards the second (confirm answered yes). Clicked from the page's
	// own script: the table is redrawn on every refresh, so a node found
	// by a CSS query and then clicked may be gone in between ("Could not
	// find node").
	cs := nodes[1].Policies().Conflicts()
	click := func(id uint64, action string) string {
		return fmt.Sprintf(`document.querySelector('#conflicts tbody tr[data-conflict="n2/%d"] button[data-action="%s"]').click()`, id, action)
	}
	if err := chromedp.Do(ctx,
		chromedp.Evaluate[chromedp.Void](`window.confirm = () => true`),
		chromedp.Evaluate[chromedp.Void](click(cs[0].ID, "take_merging")),
		chromedp.Poll[chromedp.Void](`document.querySelectorAll('#conflicts tbody tr').length === 1`),
	); err != nil {
		t.Fatalf("take the merging entry from the page: %v", err)
	}
	if e, ok, err := nodes[1].Cluster().Maps().Get(mctx, "evil", string(cs[0].Merging.Key)); err != nil || !ok || string(e.Value) != "v-"+string(cs[0].Merging.Key) {
		t.Errorf("after take merging, map evil %s = %q %v %v", cs[0].Merging.Key, e.Value, ok, err)
	}
	if err := chromedp.Do(ctx,
		chromedp.Evaluate[chromedp.Void](click(cs[1].ID, "drop")),
		chromedp.Poll[chromedp.Void](`document.querySelectorAll('#conflicts tbody tr').length === 0`),
	); err != nil {
		t.Fatalf("drop the conflict from the page: %v", err)
	}
	if cs := nodes[1].Policies().Conflicts(); len(cs) != 0 {
		t.Errorf("after the page's drop, %d conflicts parked on n2", len(cs))
	}

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

// newBrowser starts headless Chromium for one test.
func newBrowser(t *testing.T, exe string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.NoSandbox, // CI runs as root
		chromedp.DisableGPU,
		chromedp.WindowSize(1280, 1000),
	)
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestStatusPageWithToken: with admin.token_file the page is refused
// without credentials (a Basic challenge, so a browser asks), and works,
// API calls included, with them.
func TestStatusPageWithToken(t *testing.T) {
	exe := browser(t)
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("page-test-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := brokertest.Config()
	cfg.Admin.TokenFile = tok
	n := brokertest.Start(t, cfg)
	ctx := newBrowser(t, exe)
	url := "http://" + n.AdminAddr() + "/?poll=300"
	// Without credentials: a 401 with a Basic challenge, which headless
	// Chromium (no one to ask) reports as a load error.
	resp, err := chromedp.Run(ctx, chromedp.NavigateResponse(url))
	if err == nil && resp.Status != 401 || err != nil && !strings.Contains(err.Error(), "AUTH") {
		t.Fatalf("page without credentials: %v %v, want 401 or an auth error", resp, err)
	}
	if _, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{
		Headers: network.Headers{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("operator:page-test-token-0123456789"))},
	}); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx,
		chromedp.Navigate(url),
		chromedp.Poll[chromedp.Void](`document.body.dataset.loaded === "true"`),
	); err != nil {
		t.Fatalf("page with credentials: %v", err)
	}
	if got := run(t, ctx, chromedp.Text(chromedp.CSS(`#members tbody`))); !strings.Contains(got, "test") {
		t.Errorf("members with clustering disabled: %q, want the node itself", got)
	}
}

// TestStatusPageNetsplitBanner: on a live three-node cluster on the
// fault-injecting network, n1's page shows the netsplit banner naming n3
// within the detection bound when n3 is cut off, and after the heal the
// banner goes and the last heal shows. A screenshot of the banner goes
// to the test's temporary directory (examples/deploy with
// MENDMQ_UPDATE_SCREENSHOT=1).
func TestStatusPageNetsplitBanner(t *testing.T) {
	exe := browser(t)
	nw := clustertest.New(t, clustertest.Config{})
	nodes := startCluster(t, 3, func(name string, cfg *config.Config) {
		tr, err := nw.Transport(name)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Cluster.Transport, cfg.Cluster.DataNetwork, cfg.Cluster.GossipAddress = tr, nw.DataNetwork(name), tr.Addr()
	})
	ctx := newBrowser(t, exe)
	banner := `!document.getElementById('netsplit').hidden`
	if err := chromedp.Do(ctx,
		chromedp.Navigate("http://"+nodes[0].AdminAddr()+"/?poll=200"),
		chromedp.Poll[chromedp.Void](`document.body.dataset.loaded === "true"`),
		chromedp.Poll[chromedp.Void](`document.querySelectorAll('#members tbody tr[data-state="alive"]').length === 3`),
	); err != nil {
		t.Fatalf("status page in Chromium: %v", err)
	}
	if run(t, ctx, chromedp.Evaluate[bool](banner)) {
		t.Fatal("the netsplit banner shows on a whole cluster")
	}
	// ?poll=200 is below the 250 ms floor; the footer says what runs.
	if every := run(t, ctx, chromedp.Text(chromedp.CSS(`#poll-every`))); every != "250 ms" {
		t.Errorf("footer polling interval %q, want 250 ms", every)
	}
	cut := time.Now()
	nw.Isolate("n3")
	// Detection takes about a second with the loopback timings; the
	// page polls every 200 ms. 10 s is the bound the cluster tests use.
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := chromedp.Do(pctx, chromedp.Poll[chromedp.Void](banner+` && document.getElementById('netsplit-text').textContent.includes('n3')`)); err != nil {
		t.Fatalf("no netsplit banner naming n3 within 10 s of the cut: %v", err)
	}
	t.Logf("banner shown %v after the cut", time.Since(cut).Round(time.Millisecond))
	text := run(t, ctx, chromedp.Text(chromedp.CSS(`#netsplit`)))
	if !strings.Contains(text, "unreachable: n3") || !strings.Contains(text, "window of uncertainty") {
		t.Errorf("banner text %q: want the unreachable member and the window of uncertainty", text)
	}
	shot := run(t, ctx, chromedp.FullScreenshot(100))
	nw.Heal()
	hctx, hcancel := context.WithTimeout(ctx, 20*time.Second)
	defer hcancel()
	if err := chromedp.Do(hctx, chromedp.Poll[chromedp.Void](`!(`+banner+`) && !document.getElementById('heal').hidden`)); err != nil {
		t.Fatalf("the banner did not clear (and the last heal show) within 20 s of the heal: %v", err)
	}
	if h := run(t, ctx, chromedp.Text(chromedp.CSS(`#heal`))); !strings.Contains(h, "Last heal") {
		t.Errorf("heal line %q", h)
	}
	path := filepath.Join(t.TempDir(), "status-page-netsplit.png")
	if os.Getenv(UpdateEnv) == "1" {
		path = filepath.Join("..", "..", "..", "examples", "deploy", "status-page-netsplit.png")
	}
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("banner screenshot: %s", path)
}
