package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mendmq/mendmq/broker"
	"github.com/mendmq/mendmq/cluster"
	"github.com/mendmq/mendmq/plugins"
	"github.com/mendmq/mendmq/plugins/policycli"
)

func init() {
	register("ctl", "talk to a running node's admin API: status, cluster, sessions, subscriptions, retained, policy", runCtl)
}

const ctlUsageText = `usage: mendmq ctl [connection flags] <command> [flags] [args]

  status                         this node: members, counters, policies, conflicts
  health [--ready]               exit 0 if /healthz (or /readyz) answers 200
                                 (container health checks; no credentials needed)
  cluster status                 members, their state and traffic
  cluster join HOST:PORT...      join the cluster through gossip seeds
  cluster leave                  take this node out of the cluster for good: its
                                 sessions are withdrawn from the cluster, and it
                                 keeps serving its own clients alone until restarted
  cluster forget NAME            drop a permanently gone member and its sessions
                                 (takes effect on every node)
  sessions list [--prefix P] [--state connected|disconnected] [--node N] [--limit N]
                                 this node's sessions
  sessions show CLIENT_ID        one session with its subscriptions and queue,
                                 from whichever node holds it
  sessions kick CLIENT_ID        disconnect a client (v5: DISCONNECT 0x98), on
                                 whichever node holds its session
  subscriptions list [--client-prefix P] [--filter-prefix F] [--matches TOPIC] [--limit N]
  retained get TOPIC             the retained message of a topic
  retained list [--filter F] [--limit N]    retained messages matching F (default #)
  retained delete TOPIC          clear it cluster-wide, as a client's empty
                                 retained publish does
  policy list                    merge policies (name, maps, sha256, load time)
  policy test MAP --merging JSON [--existing JSON] [--policy NAME]
                                 what the running policy decides for these entries
                                 (nothing is parked or written); JSON as in
                                 mendmq policy test: {"key":"k","value":"v",...}
  policy reload                  re-read the config and modules; error if refused
  policy conflicts [list] [--scope cluster|node] [--limit N]
                                 parked conflicts of every node (NODE/ID each);
                                 nodes that could not be asked are named on stderr
  policy conflicts resolve REF ACTION   resolve one, on the node that holds it:
                                 take_merging (write the parked entry),
                                 keep_existing (drop it) or rerun (through the
                                 map's current policy, at the key's owner);
                                 REF is NODE/ID, or ID on the node asked
  policy conflicts drop REF      drop a parked conflict (the existing entry stays)
  policy resolve REF ACTION, policy drop REF    the same, shorter
  map get MAP KEY                an entry of a partitioned map, with its metadata
  map put MAP KEY VALUE [--ttl D]    write it (--b64: VALUE is base64)
  map del MAP KEY                delete it
  map stats [MAP]                every map (or one) per member: entries, bytes,
                                 partitions, migrations, the last merge
  debug partition [MEMBER...]    (admin.debug: true only) cut this node's cluster
                                 links to and from MEMBERs; cut a node from all
                                 others to split the cluster. No MEMBER: show
  debug heal [MEMBER...]         restore them (all when none is named)

Connection flags (before or after the command):
  --admin URL        admin API: http(s)://host:port or host:port ($MENDMQ_ADMIN,
                     default http://127.0.0.1:8080)
  --token-file FILE  bearer token ($MENDMQ_ADMIN_TOKEN_FILE)
  --cacert FILE      CA of an https admin server ($MENDMQ_ADMIN_CA_FILE)
  --cert FILE --key FILE   client certificate for mutual TLS
                     ($MENDMQ_ADMIN_CERT_FILE, $MENDMQ_ADMIN_KEY_FILE)
  --timeout D        default 15s
  --json             print the API's JSON instead of a table

Exit codes: 0 ok; 1 the node answered with an error (the message is printed);
2 usage or unreadable local files; 3 the node cannot be reached.
`

func runCtl(args []string) int { return ctl(args, os.Stdout, os.Stderr) }

// ctl runs `mendmq ctl args...`, writing results to stdout and errors and
// usage to stderr, and returns the exit code.
func ctl(args []string, stdout, stderr io.Writer) int {
	cn := defaultConn()
	fs := flag.NewFlagSet("ctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, ctlUsageText) }
	cn.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return exitUsage
	}
	x := &ctlRun{conn: cn, stdout: stdout, stderr: stderr}
	err := x.dispatch(rest)
	var u usageError
	if errors.As(err, &u) && u.err == errShowUsage {
		fs.Usage()
		return exitUsage
	}
	if err != nil {
		fmt.Fprintln(stderr, "mendmq ctl:", err)
	}
	return exitCode(err)
}

var errShowUsage = errors.New("usage")

// ctlRun is one ctl invocation.
type ctlRun struct {
	conn           *conn
	stdout, stderr io.Writer
	c              *client
}

// sub parses a command's own flags (and the connection flags again) and
// checks the number of positional arguments: n exactly, or at least 1
// when n < 0.
func (x *ctlRun) sub(name string, args []string, n int, define func(fs *flag.FlagSet)) ([]string, error) {
	fs := flag.NewFlagSet("ctl "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	x.conn.register(fs)
	if define != nil {
		define(fs)
	}
	// Flags may follow positional arguments: parse in rounds.
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usageError{fmt.Errorf("%s: %v", name, err)}
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if (n >= 0 && len(pos) != n) || (n == -1 && len(pos) == 0) { // -1: one or more; -2: any
		return nil, usageError{errShowUsage}
	}
	c, err := x.conn.client()
	if err != nil {
		return nil, err
	}
	x.c = c
	return pos, nil
}

func (x *ctlRun) dispatch(rest []string) error {
	cmd := rest[0]
	if len(rest) > 1 && !strings.HasPrefix(rest[1], "-") {
		switch cmd {
		case "cluster", "sessions", "subscriptions", "retained", "policy", "map", "debug":
			cmd += " " + rest[1]
			rest = rest[1:]
		}
	}
	args := rest[1:]
	switch cmd {
	case "status":
		return x.status(args)
	case "health":
		return x.health(args)
	case "cluster status":
		return x.clusterStatus(args)
	case "cluster join":
		return x.clusterJoin(args)
	case "cluster leave":
		return x.clusterLeave(args)
	case "cluster forget":
		return x.clusterForget(args)
	case "sessions list":
		return x.sessionsList(args)
	case "sessions show":
		return x.sessionsShow(args)
	case "sessions kick":
		return x.sessionsKick(args)
	case "subscriptions list":
		return x.subscriptionsList(args)
	case "retained get":
		return x.retainedGet(args)
	case "retained list":
		return x.retainedList(args)
	case "retained delete":
		return x.retainedDelete(args)
	case "policy list":
		return x.policyList(args)
	case "policy test":
		return x.policyTest(args)
	case "policy reload":
		return x.policyReload(args)
	case "policy conflicts":
		return x.policyConflicts(args)
	case "policy drop":
		return x.policyDrop(args)
	case "policy resolve":
		return x.policyResolve(args)
	case "map get":
		return x.mapGet(args)
	case "map put":
		return x.mapPut(args)
	case "map del", "map delete":
		return x.mapDel(args)
	case "map stats":
		return x.mapStats(args)
	case "debug partition":
		return x.debugPartition(args)
	case "debug heal":
		return x.debugHeal(args)
	}
	return usageError{errShowUsage}
}

// get fetches path into out; with --json it prints the raw answer and
// reports printed=true.
func (x *ctlRun) get(path string, out any) (printed bool, err error) {
	raw, err := x.c.do(http.MethodGet, path, nil, out)
	if err != nil {
		return false, err
	}
	if x.conn.json {
		printJSON(x.stdout, raw)
		return true, nil
	}
	return false, nil
}

// send does a POST/DELETE; with --json it prints the raw answer.
func (x *ctlRun) send(method, path string, body, out any) (printed bool, err error) {
	raw, err := x.c.do(method, path, body, out)
	if err != nil {
		return false, err
	}
	if x.conn.json {
		printJSON(x.stdout, raw)
		return true, nil
	}
	return false, nil
}

func (x *ctlRun) table() *tabwriter.Writer { return tabwriter.NewWriter(x.stdout, 0, 4, 2, ' ', 0) }

func query(kv ...string) string {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			v.Set(kv[i], kv[i+1])
		}
	}
	if len(v) == 0 {
		return ""
	}
	return "?" + v.Encode()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// --- status and health ------------------------------------------------------

func (x *ctlRun) status(args []string) error {
	if _, err := x.sub("status", args, 0, nil); err != nil {
		return err
	}
	var o broker.Overview
	if printed, err := x.get("/api/v1/overview", &o); err != nil || printed {
		return err
	}
	ready := "ready"
	if !o.Ready {
		ready = "not ready: " + o.ReadyReason
	}
	fmt.Fprintf(x.stdout, "node %s (version %s, up %s, %s)\n", o.Node, o.Version, time.Duration(o.UptimeSeconds)*time.Second, ready)
	q := o.MQTT
	fmt.Fprintf(x.stdout, "clients %d connected, %d sessions, %d subscriptions, %d retained; messages in %.0f, out %.0f, dropped %.0f\n",
		q.ClientsConnected, q.Sessions, q.Subscriptions, q.Retained, q.MessagesIn, q.MessagesOut, q.Dropped)
	if o.Cluster != nil {
		printMembers(x.stdout, *o.Cluster)
	} else {
		fmt.Fprintln(x.stdout, "clustering disabled")
	}
	fmt.Fprintf(x.stdout, "parked conflicts: %d\n", o.Conflicts)
	return nil
}

func (x *ctlRun) health(args []string) error {
	var ready bool
	if _, err := x.sub("health", args, 0, func(fs *flag.FlagSet) {
		fs.BoolVar(&ready, "ready", false, "check /readyz instead of /healthz")
	}); err != nil {
		return err
	}
	path := "/healthz"
	if ready {
		path = "/readyz"
	}
	var out map[string]string
	if printed, err := x.get(path, &out); err != nil || printed {
		return err
	}
	fmt.Fprintln(x.stdout, out["status"])
	return nil
}

// --- cluster ----------------------------------------------------------------

func (x *ctlRun) clusterStatus(args []string) error {
	if _, err := x.sub("cluster status", args, 0, nil); err != nil {
		return err
	}
	// The server's own types: the columns cannot drift from the API.
	var out struct {
		Enabled bool           `json:"enabled"`
		Node    string         `json:"node"`
		Status  cluster.Status `json:"status"`
	}
	if printed, err := x.get("/api/v1/cluster", &out); err != nil || printed {
		return err
	}
	if !out.Enabled {
		fmt.Fprintf(x.stdout, "node %s: clustering disabled\n", out.Node)
		return nil
	}
	st := out.Status
	fmt.Fprintf(x.stdout, "node %s: %d sessions, %d retained in the replicated tables\n", st.Node, st.Sessions, st.Retained)
	fmt.Fprintln(x.stdout, netsplitLine(st.Netsplit))
	if len(st.DebugCut) > 0 {
		fmt.Fprintf(x.stdout, "debug partition: this node cuts its links to %s (mendmq ctl debug heal)\n", strings.Join(st.DebugCut, ", "))
	}
	printMembers(x.stdout, st)
	return nil
}

// netsplitLine is the one-line netsplit state of `ctl cluster status`.
func netsplitLine(ns cluster.NetsplitStatus) string {
	if !ns.Split {
		line := fmt.Sprintf("netsplit: none (mode %s; %d since start)", ns.Mode, ns.Splits)
		if h := ns.LastHeal; h != nil {
			line += fmt.Sprintf("; last healed %s after %s", h.At.Format(time.RFC3339), h.Duration.Round(time.Millisecond))
			if !h.Converged.IsZero() {
				line += fmt.Sprintf(", tables converged in %s", h.Convergence.Round(time.Millisecond))
			}
		}
		return line
	}
	gate := "not gated (this side has the majority)"
	if ns.Gated {
		gate = "GATED (operations refused unless cluster.allow_*_during_netsplit)"
	}
	var us []string
	for _, u := range ns.Unreachable {
		us = append(us, fmt.Sprintf("%s (%s, uncertainty %s)", u.Name, u.Reason, u.Uncertainty().Round(time.Millisecond)))
	}
	return fmt.Sprintf("netsplit: SPLIT since %s, %s, mode %s; unreachable: %s",
		ns.Since.Format(time.RFC3339), gate, ns.Mode, strings.Join(us, ", "))
}

// printMembers renders the member table of a cluster status.
func printMembers(w io.Writer, st cluster.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tSTATE\tGOSSIP\tDATA\tREACHABLE\tSENT\tRECEIVED\tQUEUED\tHELD")
	for _, m := range st.Members {
		reach := fmt.Sprint(m.Reachable)
		if m.Self {
			reach = "(self)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\n", m.Name, m.State, m.GossipAddr, dash(m.DataAddr), reach, m.BytesSent, m.BytesReceived, m.QueueFrames, m.Held)
	}
	_ = tw.Flush()
}

func (x *ctlRun) clusterJoin(args []string) error {
	seeds, err := x.sub("cluster join", args, -1, nil)
	if err != nil {
		return err
	}
	var out struct {
		Contacted int `json:"contacted"`
	}
	if printed, err := x.send(http.MethodPost, "/api/v1/cluster/join", map[string][]string{"seeds": seeds}, &out); err != nil || printed {
		return err
	}
	fmt.Fprintf(x.stdout, "joined: %d seed(s) contacted\n", out.Contacted)
	return nil
}

func (x *ctlRun) clusterLeave(args []string) error {
	if _, err := x.sub("cluster leave", args, 0, nil); err != nil {
		return err
	}
	var out struct {
		Withdrawal cluster.Withdrawal `json:"withdrawal"`
	}
	if printed, err := x.send(http.MethodPost, "/api/v1/cluster/leave", nil, &out); err != nil || printed {
		return err
	}
	w := out.Withdrawal
	fmt.Fprintf(x.stdout, "%s left the cluster: %d session(s) withdrawn; it serves its own clients alone until restarted\n", w.Node, w.Sessions)
	printUnconfirmed(x.stderr, w, "a node that left cannot repair them: run `mendmq ctl cluster forget "+w.Node+"` on one of them")
	return nil
}

func (x *ctlRun) clusterForget(args []string) error {
	pos, err := x.sub("cluster forget", args, 1, nil)
	if err != nil {
		return err
	}
	var out struct {
		Withdrawal cluster.Withdrawal `json:"withdrawal"`
	}
	if printed, err := x.send(http.MethodPost, "/api/v1/cluster/forget/"+url.PathEscape(pos[0]), nil, &out); err != nil || printed {
		return err
	}
	fmt.Fprintf(x.stdout, "forgot %s: %d session record(s) deleted cluster-wide\n", pos[0], out.Withdrawal.Sessions)
	printUnconfirmed(x.stderr, out.Withdrawal, "anti-entropy repairs them")
	return nil
}

// printUnconfirmed warns about the parts of a withdrawal that peers did
// not confirm.
func printUnconfirmed(w io.Writer, wd cluster.Withdrawal, remedy string) {
	if len(wd.Unconfirmed) > 0 {
		fmt.Fprintf(w, "warning: %s did not confirm the deletion of %s's session records in time; %s\n",
			strings.Join(wd.Unconfirmed, ", "), wd.Node, remedy)
	}
	for _, s := range wd.Warnings {
		fmt.Fprintln(w, "warning:", s)
	}
}

// --- sessions and subscriptions ---------------------------------------------

func (x *ctlRun) sessionsList(args []string) error {
	var prefix, state, node, limit string
	if _, err := x.sub("sessions list", args, 0, func(fs *flag.FlagSet) {
		fs.StringVar(&prefix, "prefix", "", "client id prefix")
		fs.StringVar(&state, "state", "", "connected or disconnected")
		fs.StringVar(&node, "node", "", "node name (this node's only, today)")
		fs.StringVar(&limit, "limit", "", "at most this many")
	}); err != nil {
		return err
	}
	var out broker.SessionList
	if printed, err := x.get("/api/v1/sessions"+query("prefix", prefix, "state", state, "node", node, "limit", limit), &out); err != nil || printed {
		return err
	}
	tw := x.table()
	fmt.Fprintln(tw, "CLIENT\tNODE\tCONNECTED\tPROTO\tUSER\tREMOTE\tCLEAN\tSUBS\tQUEUED")
	for _, s := range out.Sessions {
		fmt.Fprintf(tw, "%s\t%s\t%v\t%d\t%s\t%s\t%v\t%d\t%d\n", s.ClientID, s.Node, s.Connected, s.Protocol, dash(s.Username), dash(s.Remote), s.Clean, s.Subscriptions, s.Queued)
	}
	_ = tw.Flush()
	if out.Truncated {
		fmt.Fprintf(x.stderr, "(truncated at %d; use --limit or --prefix)\n", len(out.Sessions))
	}
	return nil
}

func (x *ctlRun) sessionsShow(args []string) error {
	pos, err := x.sub("sessions show", args, 1, nil)
	if err != nil {
		return err
	}
	var s broker.SessionInfo
	if printed, err := x.get("/api/v1/sessions/show"+query("client_id", pos[0]), &s); err != nil || printed {
		return err
	}
	tw := x.table()
	node := s.Node
	if s.Via != "" {
		node += " (asked through " + s.Via + ")"
	}
	fmt.Fprintf(tw, "client\t%s\nnode\t%s\nconnected\t%v\nprotocol\t%d\nusername\t%s\nremote\t%s\nlistener\t%s\nclean\t%v\nexpiry interval\t%ds\nqueued\t%d\n",
		s.ClientID, node, s.Connected, s.Protocol, dash(s.Username), dash(s.Remote), dash(s.Listener), s.Clean, s.ExpiryInterval, s.Queued)
	if s.DisconnectedAt != nil {
		fmt.Fprintf(tw, "disconnected at\t%s\n", s.DisconnectedAt.Local().Format(time.DateTime))
	}
	_ = tw.Flush()
	fmt.Fprintln(x.stdout)
	printSubs(x.table(), s.Subs, false)
	return nil
}

func printSubs(tw *tabwriter.Writer, subs []broker.SubscriptionInfo, withClient bool) {
	if withClient {
		fmt.Fprint(tw, "CLIENT\t")
	}
	fmt.Fprintln(tw, "FILTER\tQOS\tNO LOCAL\tRETAIN AS PUBLISHED\tRETAIN HANDLING")
	for _, s := range subs {
		if withClient {
			fmt.Fprintf(tw, "%s\t", s.ClientID)
		}
		fmt.Fprintf(tw, "%s\t%d\t%v\t%v\t%d\n", s.Filter, s.QoS, s.NoLocal, s.RetainAsPublished, s.RetainHandling)
	}
	_ = tw.Flush()
}

func (x *ctlRun) sessionsKick(args []string) error {
	pos, err := x.sub("sessions kick", args, 1, nil)
	if err != nil {
		return err
	}
	var out broker.KickResult
	printed, err := x.send(http.MethodPost, "/api/v1/sessions/kick", broker.KickRequest{ClientID: pos[0]}, &out)
	var ae *apiError
	if errors.As(err, &ae) && ae.Node != "" {
		return fmt.Errorf("%w (the session is on %s)", err, ae.Node)
	}
	if err != nil || printed {
		return err
	}
	if out.Kicked {
		fmt.Fprintf(x.stdout, "kicked %s from %s\n", out.ClientID, out.Node)
	} else {
		fmt.Fprintf(x.stdout, "%s was not connected to %s (its session stays until it expires)\n", out.ClientID, out.Node)
	}
	return nil
}

func (x *ctlRun) subscriptionsList(args []string) error {
	var cp, fp, matches, limit string
	if _, err := x.sub("subscriptions list", args, 0, func(fs *flag.FlagSet) {
		fs.StringVar(&cp, "client-prefix", "", "client id prefix")
		fs.StringVar(&fp, "filter-prefix", "", "topic filter prefix")
		fs.StringVar(&matches, "matches", "", "only filters matching this topic")
		fs.StringVar(&limit, "limit", "", "at most this many")
	}); err != nil {
		return err
	}
	var out broker.SubscriptionList
	path := "/api/v1/subscriptions" + query("client_prefix", cp, "filter_prefix", fp, "matches", matches, "limit", limit)
	if printed, err := x.get(path, &out); err != nil || printed {
		return err
	}
	printSubs(x.table(), out.Subscriptions, true)
	if out.Truncated {
		fmt.Fprintf(x.stderr, "(truncated at %d; use --limit or a prefix)\n", len(out.Subscriptions))
	}
	if len(out.ClusterCounts) > 0 {
		var parts []string
		for n, c := range out.ClusterCounts {
			parts = append(parts, fmt.Sprintf("%s %d", n, c))
		}
		sort.Strings(parts)
		fmt.Fprintf(x.stderr, "cluster routes per node: %s\n", strings.Join(parts, ", "))
	}
	return nil
}

// --- retained ---------------------------------------------------------------

func (x *ctlRun) retainedGet(args []string) error {
	pos, err := x.sub("retained get", args, 1, nil)
	if err != nil {
		return err
	}
	var out broker.RetainedList
	if printed, err := x.get("/api/v1/retained"+query("topic", pos[0]), &out); err != nil || printed {
		return err
	}
	x.printRetained(out.Messages)
	return nil
}

func (x *ctlRun) retainedList(args []string) error {
	filter, limit := "#", ""
	if _, err := x.sub("retained list", args, 0, func(fs *flag.FlagSet) {
		fs.StringVar(&filter, "filter", "#", "topic filter")
		fs.StringVar(&limit, "limit", "", "at most this many")
	}); err != nil {
		return err
	}
	var out broker.RetainedList
	if printed, err := x.get("/api/v1/retained"+query("filter", filter, "limit", limit), &out); err != nil || printed {
		return err
	}
	x.printRetained(out.Messages)
	if out.Truncated {
		fmt.Fprintf(x.stderr, "(truncated at %d; use --limit or a narrower --filter)\n", len(out.Messages))
	}
	return nil
}

func (x *ctlRun) printRetained(ms []broker.RetainedMessage) {
	tw := x.table()
	fmt.Fprintln(tw, "TOPIC\tQOS\tBYTES\tORIGIN\tCREATED\tHITS\tPAYLOAD")
	for _, m := range ms {
		created := "-"
		if m.CreatedAt != nil {
			created = m.CreatedAt.Local().Format(time.DateTime)
		}
		payload := "base64:" + deref(m.PayloadB64)
		if m.Payload != nil {
			payload = *m.Payload
		}
		if len(payload) > 60 {
			payload = payload[:57] + "..."
		}
		hits := "-" // not clustered
		if m.Hits != nil {
			hits = fmt.Sprint(*m.Hits)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%q\n", m.Topic, m.QoS, m.Bytes, dash(m.Origin), created, hits, payload)
	}
	_ = tw.Flush()
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func (x *ctlRun) retainedDelete(args []string) error {
	pos, err := x.sub("retained delete", args, 1, nil)
	if err != nil {
		return err
	}
	if printed, err := x.send(http.MethodDelete, "/api/v1/retained"+query("topic", pos[0]), nil, nil); err != nil || printed {
		return err
	}
	fmt.Fprintf(x.stdout, "retained message on %s deleted\n", pos[0])
	return nil
}

// --- policies ---------------------------------------------------------------

func (x *ctlRun) policyList(args []string) error {
	if _, err := x.sub("policy list", args, 0, nil); err != nil {
		return err
	}
	var infos []plugins.PolicyInfo
	if printed, err := x.get("/api/v1/policies", &infos); err != nil || printed {
		return err
	}
	policycli.WriteList(x.stdout, infos)
	return nil
}

func (x *ctlRun) policyReload(args []string) error {
	if _, err := x.sub("policy reload", args, 0, nil); err != nil {
		return err
	}
	if printed, err := x.send(http.MethodPost, "/api/v1/policies/reload", nil, nil); err != nil || printed {
		return err
	}
	fmt.Fprintln(x.stdout, "policies reloaded")
	return nil
}
