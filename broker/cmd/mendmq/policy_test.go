package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mendmq/mendmq/plugins"
)

// TestModuleReloadErrorVisible: a watched module file replaced by one that
// does not load keeps the old module running, and GET /api/v1/policies and
// `mendmq policy list` show the running digest, the digest on disk and the
// reload error until a good file arrives.
func TestModuleReloadErrorVisible(t *testing.T) {
	mod := filepath.Join(t.TempDir(), "mine.wasm")
	replace := func(b []byte) {
		tmp := mod + ".tmp"
		if err := os.WriteFile(tmp, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, mod); err != nil {
			t.Fatal(err)
		}
	}
	read := func(rel string) []byte {
		b, err := os.ReadFile(filepath.Join("..", "..", "..", rel))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	sum := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	good, other, broken := read("examples/policies/c/latestupdate/latestupdate.wasm"),
		read("examples/policies/c/counter/counter.wasm"), []byte("not a wasm module")
	replace(good)
	p := startNode(t, fmt.Sprintf("policies: {mine: {module: %q}}\nretained: {merge_policy: mine}\n"+
		"plugins: {watch_poll_interval: 100ms}\n", mod))
	defer p.stop(t)
	admin := fmt.Sprintf("http://127.0.0.1:%d", p.admin)
	mine := func() plugins.PolicyInfo {
		resp, err := http.Get(admin + "/api/v1/policies")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var infos []plugins.PolicyInfo
		if err := json.NewDecoder(resp.Body).Decode(&infos); err != nil {
			t.Fatal(err)
		}
		for _, i := range infos {
			if i.Name == "mine" {
				return i
			}
		}
		t.Fatal("policy mine not listed")
		return plugins.PolicyInfo{}
	}
	await := func(what string, cond func(plugins.PolicyInfo) bool) plugins.PolicyInfo {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			i := mine()
			if cond(i) {
				return i
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %+v\n%s", what, i, p.out)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	await("module loaded", func(i plugins.PolicyInfo) bool {
		return i.Loaded && i.SHA256 == sum(good) && i.DiskSHA256 == sum(good) && i.LastReloadError == ""
	})

	replace(broken)
	i := await("failed reload shown", func(i plugins.PolicyInfo) bool { return i.LastReloadError != "" })
	if i.SHA256 != sum(good) || i.DiskSHA256 != sum(broken) || !strings.Contains(i.LastReloadError, mod) ||
		!strings.Contains(i.LastReloadError, "policies.mine.module") {
		t.Fatalf("after a broken module: %+v", i)
	}
	out, err := exec.Command(binPath, "policy", "list", "--admin", admin).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "mine: last reload failed at") || !strings.Contains(string(out), sum(broken)[:12]) {
		t.Fatalf("policy list: %v\n%s", err, out)
	}

	replace(other)
	await("good module loaded, error cleared", func(i plugins.PolicyInfo) bool {
		return i.SHA256 == sum(other) && i.DiskSHA256 == sum(other) && i.LastReloadError == ""
	})
}
