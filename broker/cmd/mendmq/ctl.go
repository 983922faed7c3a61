package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

func init() {
	register("ctl", "talk to a running node's admin API: cluster status|join|leave|forget", runCtl)
}

func ctlUsage() {
	fmt.Fprint(os.Stderr, `usage: mendmq ctl [--admin URL] <command>

  cluster status              members, their state and traffic
  cluster join HOST:PORT...   join the cluster through gossip seeds
  cluster leave               leave the cluster gracefully (node keeps serving alone)
  cluster forget NAME         drop a permanently dead member and its sessions

--admin defaults to $MENDMQ_ADMIN or http://127.0.0.1:8080.
`)
}

func runCtl(args []string) int {
	fs := flag.NewFlagSet("ctl", flag.ContinueOnError)
	def := os.Getenv("MENDMQ_ADMIN")
	if def == "" {
		def = "http://127.0.0.1:8080"
	}
	adminURL := fs.String("admin", def, "admin API base URL")
	fs.Usage = ctlUsage
	if err := fs.Parse(args); err != nil {
		return 2
	}
	rest := fs.Args()
	if len(rest) < 2 || rest[0] != "cluster" {
		ctlUsage()
		return 2
	}
	base := strings.TrimRight(*adminURL, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	c := &http.Client{Timeout: 15 * time.Second}
	switch rest[1] {
	case "status":
		var out struct {
			Enabled bool   `json:"enabled"`
			Node    string `json:"node"`
			Status  struct {
				Node     string `json:"node"`
				Sessions int    `json:"sessions"`
				Retained int    `json:"retained"`
				Members  []struct {
					Name, State, GossipAddr, DataAddr string
					Reachable, Self                   bool
					BytesSent                         uint64 `json:"bytes_sent"`
					BytesReceived                     uint64 `json:"bytes_received"`
					QueueFrames                       int    `json:"queue_frames"`
				} `json:"members"`
			} `json:"status"`
		}
		if err := ctlDo(c, "GET", base+"/api/v1/cluster", nil, &out); err != nil {
			fmt.Fprintln(os.Stderr, "mendmq ctl:", err)
			return 1
		}
		if !out.Enabled {
			fmt.Printf("node %s: clustering disabled\n", out.Node)
			return 0
		}
		fmt.Printf("node %s: %d sessions, %d retained in the replicated tables\n", out.Status.Node, out.Status.Sessions, out.Status.Retained)
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "MEMBER\tSTATE\tGOSSIP\tDATA\tREACHABLE\tSENT\tRECEIVED\tQUEUED")
		for _, m := range out.Status.Members {
			reach := fmt.Sprint(m.Reachable)
			if m.Self {
				reach = "(self)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\n", m.Name, m.State, m.GossipAddr, m.DataAddr, reach, m.BytesSent, m.BytesReceived, m.QueueFrames)
		}
		_ = tw.Flush()
	case "join":
		if len(rest) < 3 {
			ctlUsage()
			return 2
		}
		body, _ := json.Marshal(map[string][]string{"seeds": rest[2:]})
		var out map[string]any
		if err := ctlDo(c, "POST", base+"/api/v1/cluster/join", body, &out); err != nil {
			fmt.Fprintln(os.Stderr, "mendmq ctl:", err)
			return 1
		}
		fmt.Printf("joined: %v seed(s) contacted\n", out["contacted"])
	case "leave":
		if err := ctlDo(c, "POST", base+"/api/v1/cluster/leave", nil, nil); err != nil {
			fmt.Fprintln(os.Stderr, "mendmq ctl:", err)
			return 1
		}
		fmt.Println("left the cluster")
	case "forget":
		if len(rest) != 3 {
			ctlUsage()
			return 2
		}
		if err := ctlDo(c, "POST", base+"/api/v1/cluster/forget/"+rest[2], nil, nil); err != nil {
			fmt.Fprintln(os.Stderr, "mendmq ctl:", err)
			return 1
		}
		fmt.Printf("forgot %s\n", rest[2])
	default:
		ctlUsage()
		return 2
	}
	return 0
}

// ctlDo performs one admin API request; a non-2xx answer becomes an error
// carrying the server's message.
func ctlDo(c *http.Client, method, url string, body []byte, out any) error {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w (is the node running, and --admin right?)", method, url, err)
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
