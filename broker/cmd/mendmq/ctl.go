package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mendmq/mendmq/cluster"
)

func init() {
	register("ctl", "talk to a running node's admin API: cluster status|join|leave|forget", runCtl)
}

const ctlUsageText = `usage: mendmq ctl [--admin URL] <command>

  cluster status              members, their state and traffic
  cluster join HOST:PORT...   join the cluster through gossip seeds
  cluster leave               take this node out of the cluster for good: its
                              sessions are withdrawn from the cluster, and it
                              keeps serving its own clients alone until restarted
  cluster forget NAME         drop a permanently gone member and its sessions
                              (takes effect on every node)

--admin defaults to $MENDMQ_ADMIN or http://127.0.0.1:8080.
`

func runCtl(args []string) int { return ctl(args, os.Stdout, os.Stderr) }

// ctl runs `mendmq ctl args...`, writing results to stdout and errors and
// usage to stderr, and returns the exit code.
func ctl(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	def := os.Getenv("MENDMQ_ADMIN")
	if def == "" {
		def = "http://127.0.0.1:8080"
	}
	adminURL := fs.String("admin", def, "admin API base URL")
	fs.Usage = func() { fmt.Fprint(stderr, ctlUsageText) }
	if err := fs.Parse(args); err != nil {
		return 2
	}
	rest := fs.Args()
	if len(rest) < 2 || rest[0] != "cluster" {
		fs.Usage()
		return 2
	}
	base := strings.TrimRight(*adminURL, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	c := &http.Client{Timeout: 15 * time.Second}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "mendmq ctl:", err)
		return 1
	}
	switch rest[1] {
	case "status":
		// The server's own types: the columns cannot drift from the API.
		var out struct {
			Enabled bool           `json:"enabled"`
			Node    string         `json:"node"`
			Status  cluster.Status `json:"status"`
		}
		if err := ctlDo(c, "GET", base+"/api/v1/cluster", nil, &out); err != nil {
			return fail(err)
		}
		printStatus(stdout, out.Enabled, out.Node, out.Status)
	case "join":
		if len(rest) < 3 {
			fs.Usage()
			return 2
		}
		body, _ := json.Marshal(map[string][]string{"seeds": rest[2:]})
		var out map[string]any
		if err := ctlDo(c, "POST", base+"/api/v1/cluster/join", body, &out); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "joined: %v seed(s) contacted\n", out["contacted"])
	case "leave":
		if len(rest) != 2 {
			fs.Usage()
			return 2
		}
		var out struct {
			Withdrawal cluster.Withdrawal `json:"withdrawal"`
		}
		if err := ctlDo(c, "POST", base+"/api/v1/cluster/leave", nil, &out); err != nil {
			return fail(err)
		}
		w := out.Withdrawal
		fmt.Fprintf(stdout, "%s left the cluster: %d session(s) withdrawn; it serves its own clients alone until restarted\n", w.Node, w.Sessions)
		printUnconfirmed(stderr, w, "a node that left cannot repair them: run `mendmq ctl cluster forget "+w.Node+"` on one of them")
	case "forget":
		if len(rest) != 3 {
			fs.Usage()
			return 2
		}
		var out struct {
			Withdrawal cluster.Withdrawal `json:"withdrawal"`
		}
		if err := ctlDo(c, "POST", base+"/api/v1/cluster/forget/"+url.PathEscape(rest[2]), nil, &out); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "forgot %s: %d session record(s) deleted cluster-wide\n", rest[2], out.Withdrawal.Sessions)
		printUnconfirmed(stderr, out.Withdrawal, "anti-entropy repairs them")
	default:
		fs.Usage()
		return 2
	}
	return 0
}

// printStatus renders GET /api/v1/cluster.
func printStatus(w io.Writer, enabled bool, node string, st cluster.Status) {
	if !enabled {
		fmt.Fprintf(w, "node %s: clustering disabled\n", node)
		return
	}
	fmt.Fprintf(w, "node %s: %d sessions, %d retained in the replicated tables\n", st.Node, st.Sessions, st.Retained)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tSTATE\tGOSSIP\tDATA\tREACHABLE\tSENT\tRECEIVED\tQUEUED")
	for _, m := range st.Members {
		reach := fmt.Sprint(m.Reachable)
		if m.Self {
			reach = "(self)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\n", m.Name, m.State, m.GossipAddr, m.DataAddr, reach, m.BytesSent, m.BytesReceived, m.QueueFrames)
	}
	_ = tw.Flush()
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

// ctlDo performs one admin API request; a non-2xx answer becomes an error
// carrying the server's message.
func ctlDo(c *http.Client, method, target string, body []byte, out any) error {
	req, err := http.NewRequest(method, target, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w (is the node running, and --admin right?)", method, target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s: %s", resp.Status, e.Error)
		}
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode answer: %w", err)
		}
	}
	return nil
}
