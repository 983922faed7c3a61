package broker_test

import (
	"testing"

	"github.com/mendmq/mendmq/broker/brokertest"
)

// TestPolicyTestAPI: POST /api/v1/policies/test answers what the running
// policy decides for given entries, changes nothing, and refuses bad
// input with a reason.
func TestPolicyTestAPI(t *testing.T) {
	t.Parallel()
	n := brokertest.Start(t, brokertest.Config())
	type answer struct {
		Policy, SHA256, Map, Verdict, Reason string
		Entry                                map[string]any
	}
	for _, tc := range []struct {
		body, verdict string
	}{
		{`{"map":"m","merging":{"key":"k","value":"new","last_update_time":2},"existing":{"key":"k","value":"old","last_update_time":1}}`, "take_merging"},
		{`{"map":"m","merging":{"key":"k","value":"new","last_update_time":1},"existing":{"key":"k","value":"old","last_update_time":2}}`, "keep_existing"},
		{`{"map":"m","merging":{"key_b64":"AAE=","value_b64":"/w=="}}`, "take_merging"},
		{`{"map":"$retained","policy":"latestupdate","merging":{"key":"t/1","value":"x"},"existing":null}`, "take_merging"},
	} {
		var a answer
		mustCall(t, n, "POST", "/api/v1/policies/test", tc.body, 200, &a)
		if a.Verdict != tc.verdict || a.Policy != "latestupdate" || len(a.SHA256) != 64 {
			t.Errorf("%s: %+v, want %s by latestupdate", tc.body, a, tc.verdict)
		}
	}
	for _, tc := range []struct {
		body string
		code int
	}{
		{``, 400},
		{`{"merging":{"key":"k"}}`, 400},
		{`{"map":"m"}`, 400},
		{`{"map":"m","merging":{"key":"k","key_b64":"aw=="}}`, 400},
		{`{"map":"m","merging":{"key":"k","value_b64":"%%%"}}`, 400},
		{`{"map":"m","merging":{"key":"k"},"extra":1}`, 400},
		{`{"map":"m","policy":"higherhits","merging":{"key":"k"}}`, 404}, // not loaded: no map uses it
	} {
		mustCall(t, n, "POST", "/api/v1/policies/test", tc.body, tc.code, nil)
	}
	var cs struct {
		Conflicts []any `json:"conflicts"`
	}
	mustCall(t, n, "GET", "/api/v1/policies/conflicts?scope=node", ``, 200, &cs)
	if len(cs.Conflicts) != 0 {
		t.Errorf("a dry run parked %d conflicts", len(cs.Conflicts))
	}
}
