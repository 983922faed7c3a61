package plugins

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// TestTry: a dry run answers what the running policy decides — by map or
// by name — and leaves no trace: a trap is reported as fail, not parked,
// and the merge counters do not move.
func TestTry(t *testing.T) {
	cfg := cConfig()
	cfg.Policies["hostile"] = PolicyConfig{Module: hostilePath("trap")}
	cfg.Maps["evil"] = MapConfig{MergePolicy: "hostile"}
	r := newRegistry(t, cfg)
	ctx := context.Background()
	before := counterValue(t, r, "mendmq_policy_merges_total", nil)
	// One real merge first, so the counters exist and a dry run that
	// counted would show.
	if _, err := r.Merge(ctx, "orders", ev("z", 1), nil); err != nil {
		t.Fatal(err)
	}
	before++

	for _, tc := range []struct {
		policy, mapName   string
		merging, existing *EntryView
		want, wantPolicy  string
	}{
		{"", "orders", ev("a", 5), nil, "take_merging", "clatest"},
		{"", "orders", ev("a", 1), ev("a", 2), "keep_existing", "clatest"},
		{"clatest", "elsewhere", ev("a", 3), ev("a", 2), "take_merging", "clatest"},
		{"", "evil", ev("x", 1), nil, "take_merging", "hostile"},
		{"", "evil", ev("boom", 1), nil, "fail", "hostile"},
	} {
		res, err := r.Try(ctx, tc.policy, tc.mapName, tc.merging, tc.existing)
		if err != nil {
			t.Fatalf("Try(%q, %q, %s): %v", tc.policy, tc.mapName, tc.merging.Key, err)
		}
		if res.Verdict != tc.want || res.Policy != tc.wantPolicy || res.SHA256 == "" {
			t.Errorf("Try(%q, %q, %s) = %+v, want %s by %s", tc.policy, tc.mapName, tc.merging.Key, res, tc.want, tc.wantPolicy)
		}
		if tc.want == "fail" && !strings.Contains(res.Reason, "trap") {
			t.Errorf("a trap's reason: %q", res.Reason)
		}
	}
	if n := len(r.Conflicts()); n != 0 {
		t.Errorf("a dry run parked %d conflicts", n)
	}
	if after := counterValue(t, r, "mendmq_policy_merges_total", nil); after != before {
		t.Errorf("a dry run moved the merge counters: %v -> %v", before, after)
	}
	if _, err := r.Try(ctx, "higherhits", "orders", ev("a", 1), nil); !errors.Is(err, ErrPolicyNotLoaded) {
		t.Errorf("Try of a policy no map uses: %v, want ErrPolicyNotLoaded", err)
	}
}
