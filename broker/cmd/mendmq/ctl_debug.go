package main

import (
	"fmt"
	"net/http"
	"strings"
)

// --- debug ------------------------------------------------------------------

// debugAnswer is the answer of /api/v1/debug/partition and /heal.
type debugAnswer struct {
	Enabled bool     `json:"enabled"`
	Node    string   `json:"node"`
	Cut     []string `json:"cut"`
	Healed  []string `json:"healed"`
}

func (x *ctlRun) printCut(a debugAnswer) {
	if len(a.Cut) == 0 {
		fmt.Fprintf(x.stdout, "node %s: no cluster link cut", a.Node)
	} else {
		fmt.Fprintf(x.stdout, "node %s: cluster links cut to %s", a.Node, strings.Join(a.Cut, ", "))
	}
	if !a.Enabled {
		fmt.Fprint(x.stdout, " (admin.debug is false: the switch is off)")
	}
	fmt.Fprintln(x.stdout)
}

func (x *ctlRun) debugPartition(args []string) error {
	pos, err := x.sub("debug partition", args, -2, nil)
	if err != nil {
		return err
	}
	var out debugAnswer
	var printed bool
	if len(pos) == 0 {
		printed, err = x.get("/api/v1/debug/partition", &out)
	} else {
		printed, err = x.send(http.MethodPost, "/api/v1/debug/partition", map[string]any{"members": pos}, &out)
	}
	if err != nil || printed {
		return err
	}
	x.printCut(out)
	return nil
}

func (x *ctlRun) debugHeal(args []string) error {
	pos, err := x.sub("debug heal", args, -2, nil)
	if err != nil {
		return err
	}
	var out debugAnswer
	if printed, err := x.send(http.MethodPost, "/api/v1/debug/heal", map[string]any{"members": pos}, &out); err != nil || printed {
		return err
	}
	if len(out.Healed) > 0 {
		fmt.Fprintf(x.stdout, "healed %s\n", strings.Join(out.Healed, ", "))
	}
	x.printCut(out)
	return nil
}
