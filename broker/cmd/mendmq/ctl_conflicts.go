package main

import (
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/mendmq/mendmq/broker"
)

// Parked conflicts, cluster-wide: `policy conflicts [list|resolve|drop]`.
// A conflict is addressed as NODE/ID (the "ref" of the list: ids are per
// node), or by its ID alone on the node asked.

// policyConflicts dispatches `policy conflicts [list|resolve|drop]`; the
// bare form lists.
func (x *ctlRun) policyConflicts(args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "list":
			return x.conflictsList(args[1:])
		case "resolve":
			return x.policyResolve(args[1:])
		case "drop":
			return x.policyDrop(args[1:])
		}
	}
	return x.conflictsList(args)
}

func (x *ctlRun) conflictsList(args []string) error {
	var scope, limit string
	if _, err := x.sub("policy conflicts list", args, 0, func(fs *flag.FlagSet) {
		fs.StringVar(&scope, "scope", "", "cluster (default: every node) or node (the node asked)")
		fs.StringVar(&limit, "limit", "", "at most this many per node")
	}); err != nil {
		return err
	}
	var out broker.ConflictList
	if printed, err := x.get("/api/v1/policies/conflicts"+query("scope", scope, "limit", limit), &out); err != nil || printed {
		x.warnPartial(out)
		return err
	}
	tw := x.table()
	fmt.Fprintln(tw, "REF\tMAP\tPOLICY\tKIND\tPARKED\tKEY\tREASON")
	for _, c := range out.Conflicts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%q\t%s\n", c.Ref, c.Map, c.Policy, c.Kind, c.Time.Local().Format(time.DateTime), c.Merging.Key, c.Reason)
	}
	_ = tw.Flush()
	x.warnPartial(out)
	return nil
}

// warnPartial names on stderr the nodes a listing could not ask and says
// when it was cut short: the list is partial, not wrong (exit 0).
func (x *ctlRun) warnPartial(out broker.ConflictList) {
	for _, u := range out.Unreachable {
		fmt.Fprintf(x.stderr, "warning: could not ask %s, its conflicts are not listed: %s\n", u.Node, u.Error)
	}
	if out.Truncated {
		fmt.Fprintf(x.stderr, "(truncated: at most --limit per node; parked per node: %v)\n", out.Parked)
	}
}

// conflictPath is the API path of conflict ref: NODE/ID, or ID on the
// node asked.
func conflictPath(ref string) (string, error) {
	node, id, remote := strings.Cut(ref, "/")
	if !remote {
		node, id = "", ref
	}
	if id == "" || (remote && node == "") || strings.Contains(id, "/") {
		return "", usageError{fmt.Errorf("conflict %q: want NODE/ID (as `policy conflicts` lists it) or ID", ref)}
	}
	p := "/api/v1/policies/conflicts/"
	if remote {
		p += url.PathEscape(node) + "/"
	}
	return p + url.PathEscape(id), nil
}

func (x *ctlRun) policyResolve(args []string) error {
	pos, err := x.sub("policy conflicts resolve", args, 2, nil)
	if err != nil {
		return err
	}
	path, err := conflictPath(pos[0])
	if err != nil {
		return err
	}
	var res broker.ConflictResolution
	body := map[string]string{"action": pos[1]}
	if printed, err := x.send(http.MethodPost, path, body, &res); err != nil || printed {
		return err
	}
	fmt.Fprintf(x.stdout, "conflict %s/%d (map %s, key %q) resolved: %s, %s\n", res.Node, res.ID, res.Map, res.Key, res.Action, res.Outcome)
	return nil
}

func (x *ctlRun) policyDrop(args []string) error {
	pos, err := x.sub("policy conflicts drop", args, 1, nil)
	if err != nil {
		return err
	}
	path, err := conflictPath(pos[0])
	if err != nil {
		return err
	}
	var out struct {
		Node string `json:"node"`
		ID   uint64 `json:"id"`
	}
	if printed, err := x.send(http.MethodDelete, path, nil, &out); err != nil || printed {
		return err
	}
	fmt.Fprintf(x.stdout, "conflict %s/%d dropped\n", out.Node, out.ID)
	return nil
}
