package clustertests

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mendmq/mendmq/broker"
	"github.com/mendmq/mendmq/broker/config"
	"github.com/mendmq/mendmq/plugins"
)

// do sends one admin API request and returns the status and body.
func do(t *testing.T, method, url string, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestMapsAPI writes and reads map entries through different nodes' admin
// APIs, with Hazelcast's metadata, and checks that bad input gets a 4xx
// with a reason and changes nothing.
func TestMapsAPI(t *testing.T) {
	one := 1
	c := newCluster(t, 3, clusterOptions{Mutate: func(name string, cfg *config.Config) {
		cfg.Plugins.Maps["orders"] = plugins.MapConfig{MergePolicy: "putifabsent", BackupCount: &one}
	}})
	c.eventually("the maps to settle", func() (bool, string) {
		for _, n := range c.names {
			if m := c.node(n).Cluster().Maps(); !m.Settled() || len(m.Table().Members) != 3 {
				return false, n + " not settled"
			}
		}
		return true, ""
	})
	url := func(n, path string) string { return "http://" + c.node(n).AdminAddr() + path }
	code, body := do(t, "PUT", url("n1", "/api/v1/maps/orders/o%2F1"), `{"value": "shipped", "ttl": "1h"}`)
	if code != 200 {
		t.Fatalf("put: %d %s", code, body)
	}
	for i, n := range []string{"n2", "n3", "n1"} {
		code, body = do(t, "GET", url(n, "/api/v1/maps/orders/o%2F1"), "")
		var e broker.MapEntry
		if code != 200 || json.Unmarshal([]byte(body), &e) != nil || e.Value != "shipped" || e.Key != "o/1" || e.Hits != int64(i+1) ||
			e.ExpirationTime-e.LastUpdateTime != time.Hour.Milliseconds() || e.Owner == "" {
			t.Fatalf("get on %s: %d %s", n, code, body)
		}
	}
	code, body = do(t, "PUT", url("n2", "/api/v1/maps/orders/o%2F1"), `{"value_b64": "/wD/"}`)
	if !strings.Contains(body, `"value_b64": "/wD/"`) || !strings.Contains(body, `"version": 1`) {
		t.Fatalf("binary put: %d %s", code, body)
	}
	if code, body = do(t, "GET", url("n3", "/api/v1/maps/orders"), ""); code != 200 || !strings.Contains(body, `"entries": 1`) ||
		!strings.Contains(body, `"merge_policy": "putifabsent"`) {
		t.Fatalf("map stats: %d %s", code, body)
	}
	for _, tc := range []struct {
		method, path, body string
		code               int
		why                string
	}{
		{"PUT", "/api/v1/maps/orders/k", `{"value": "x", "extra": 1}`, 400, "unknown field"},
		{"PUT", "/api/v1/maps/orders/k", `{"value": "x"`, 400, "malformed"},
		{"PUT", "/api/v1/maps/orders/k", `{}`, 400, "value"},
		{"PUT", "/api/v1/maps/orders/k", `{"value": "x", "value_b64": "eA=="}`, 400, "not both"},
		{"PUT", "/api/v1/maps/orders/k", `{"value_b64": "%%%"}`, 400, "value_b64"},
		{"PUT", "/api/v1/maps/orders/k", `{"value": "x", "ttl": "soon"}`, 400, "ttl"},
		{"PUT", "/api/v1/maps/bad%20name/k", `{"value": "x"}`, 400, "map name"},
		{"PUT", "/api/v1/maps/%24retained/k", `{"value": "x"}`, 400, "map name"},
		{"PUT", "/api/v1/maps/orders/a%01b", `{"value": "x"}`, 400, "control characters"},
		{"PUT", "/api/v1/maps/orders/" + strings.Repeat("k", 5000), `{"value": "x"}`, 400, "key"},
		{"PUT", "/api/v1/maps/orders/big", `{"value": "` + strings.Repeat("x", 2<<20) + `"}`, 413, "body"},
		{"GET", "/api/v1/maps/orders/absent", "", 404, "no key"},
		{"DELETE", "/api/v1/maps/orders/absent", "", 404, "no key"},
		{"GET", "/api/v1/maps/orders/k?x=1", "", 400, "unknown query"},
	} {
		code, body := do(t, tc.method, url("n1", tc.path), tc.body)
		if code != tc.code || !strings.Contains(body, tc.why) || !strings.Contains(body, `"error"`) {
			t.Errorf("%s %.60s: %d %.200s, want %d with %q", tc.method, tc.path, code, body, tc.code, tc.why)
		}
	}
	if code, body = do(t, "GET", url("n1", "/api/v1/maps/orders/k"), ""); code != 404 {
		t.Fatalf("a refused put changed the map: %d %s", code, body)
	}
	if code, body = do(t, "DELETE", url("n3", "/api/v1/maps/orders/o%2F1"), ""); code != 200 {
		t.Fatalf("delete: %d %s", code, body)
	}
	if code, _ = do(t, "GET", url("n2", "/api/v1/maps/orders/o%2F1"), ""); code != 404 {
		t.Fatalf("get after delete: %d", code)
	}
	var all broker.MapsOverview
	if code, body = do(t, "GET", url("n2", "/api/v1/maps"), ""); code != 200 || json.Unmarshal([]byte(body), &all) != nil ||
		len(all.Members) != 3 || all.Partitions != 271 {
		t.Fatalf("maps overview: %d %s", code, body)
	}
	owned := 0
	for _, m := range all.Members {
		owned += m.Owned
	}
	if owned != 271 {
		t.Fatalf("members own %d partitions, want 271", owned)
	}
}
