package builtin

import (
	"slices"
	"testing"

	"github.com/mendmq/mendmq/examples/policies/builtin/hazelcasttest"
)

func TestHazelcastSemantics(t *testing.T) {
	for _, c := range hazelcasttest.Cases {
		if len(c.Want) != len(ByName) {
			t.Fatalf("case %q covers %d policies, want %d", c.Name, len(c.Want), len(ByName))
		}
		for name, want := range c.Want {
			p := ByName[name]
			if p == nil {
				t.Fatalf("case %q names unknown policy %q", c.Name, name)
			}
			m := c.Merging
			if got := p("m", &m, c.Existing); got.Verdict != want {
				t.Errorf("%s / %s: %s, want %s", c.Name, name, got.Verdict, want)
			}
		}
	}
}

func TestByNameMatchesBuiltDirectories(t *testing.T) {
	// plugins/build-policies.sh builds one module per name.
	want := []string{"discard", "expirationtime", "higherhits", "latestaccess", "latestupdate", "passthrough", "putifabsent"}
	var got []string
	for n := range ByName {
		got = append(got, n)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("ByName %v, want %v", got, want)
	}
}
