package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/http"

	"github.com/mendmq/mendmq/plugins/policycli"
)

// policyTest asks the node what its running policy decides for the
// entries given (POST /api/v1/policies/test).
func (x *ctlRun) policyTest(args []string) error {
	var merging, existing, policy string
	pos, err := x.sub("policy test", args, 1, func(fs *flag.FlagSet) {
		fs.StringVar(&merging, "merging", "", "the merging entry, JSON")
		fs.StringVar(&existing, "existing", "", "the existing entry, JSON (omit: absent)")
		fs.StringVar(&policy, "policy", "", "a loaded policy other than the map's")
	})
	if err != nil {
		return err
	}
	if merging == "" {
		return usageError{fmt.Errorf("policy test: --merging is required")}
	}
	body := map[string]any{"map": pos[0], "policy": policy}
	for name, v := range map[string]string{"merging": merging, "existing": existing} {
		if v == "" {
			continue
		}
		var e policycli.Entry
		if err := json.Unmarshal([]byte(v), &e); err != nil {
			return usageError{fmt.Errorf("policy test: --%s: %v", name, err)}
		}
		body[name] = e
	}
	var out struct {
		Policy  string           `json:"policy"`
		SHA256  string           `json:"sha256"`
		Map     string           `json:"map"`
		Verdict string           `json:"verdict"`
		Reason  string           `json:"reason"`
		Entry   *policycli.Entry `json:"entry"`
	}
	if printed, err := x.send(http.MethodPost, "/api/v1/policies/test", body, &out); err != nil || printed {
		return err
	}
	fmt.Fprintf(x.stdout, "%s (sha256 %.12s) on map %s: %s", out.Policy, out.SHA256, out.Map, out.Verdict)
	if out.Reason != "" {
		fmt.Fprintf(x.stdout, " (%s)", out.Reason)
	}
	fmt.Fprintln(x.stdout)
	if out.Entry != nil {
		b, _ := json.Marshal(out.Entry)
		fmt.Fprintf(x.stdout, "entry: %s\n", b)
	}
	return nil
}
