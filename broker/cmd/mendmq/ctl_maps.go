package main

import (
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/mendmq/mendmq/broker"
)

func mapPath(name, key string) string {
	p := "/api/v1/maps/" + url.PathEscape(name)
	if key != "" {
		p += "/" + url.PathEscape(key)
	}
	return p
}

func (x *ctlRun) printEntry(e broker.MapEntry) {
	tw := x.table()
	v := e.Value
	if e.ValueB64 != "" {
		v = "(base64) " + e.ValueB64
	}
	ms := func(t int64) string {
		if t == 0 {
			return "-"
		}
		return time.UnixMilli(t).Local().Format("2006-01-02 15:04:05.000")
	}
	fmt.Fprintf(tw, "map\t%s\nkey\t%s\nvalue\t%s\nversion\t%d\nhits\t%d\ncost\t%d bytes\n", e.Map, e.Key, v, e.Version, e.Hits, e.Cost)
	fmt.Fprintf(tw, "created\t%s\nlast update\t%s\nlast access\t%s\nlast stored\t%s\nexpires\t%s\npartition\t%d (owner %s)\n",
		ms(e.CreationTime), ms(e.LastUpdateTime), ms(e.LastAccessTime), ms(e.LastStoredTime), ms(e.ExpirationTime), e.Partition, e.Owner)
	_ = tw.Flush()
}

func (x *ctlRun) mapGet(args []string) error {
	pos, err := x.sub("map get", args, 2, nil)
	if err != nil {
		return err
	}
	var e broker.MapEntry
	if printed, err := x.get(mapPath(pos[0], pos[1]), &e); err != nil || printed {
		return err
	}
	x.printEntry(e)
	return nil
}

func (x *ctlRun) mapPut(args []string) error {
	var ttl string
	var b64 bool
	pos, err := x.sub("map put", args, 3, func(fs *flag.FlagSet) {
		fs.StringVar(&ttl, "ttl", "", "expire this long after the write (e.g. 30s)")
		fs.BoolVar(&b64, "b64", false, "VALUE is base64")
	})
	if err != nil {
		return err
	}
	body := map[string]any{"value": pos[2]}
	if b64 {
		body = map[string]any{"value_b64": pos[2]}
	}
	if ttl != "" {
		body["ttl"] = ttl
	}
	var e broker.MapEntry
	if printed, err := x.send(http.MethodPut, mapPath(pos[0], pos[1]), body, &e); err != nil || printed {
		return err
	}
	x.printEntry(e)
	return nil
}

func (x *ctlRun) mapDel(args []string) error {
	pos, err := x.sub("map del", args, 2, nil)
	if err != nil {
		return err
	}
	if printed, err := x.send(http.MethodDelete, mapPath(pos[0], pos[1]), nil, nil); err != nil || printed {
		return err
	}
	fmt.Fprintf(x.stdout, "%s/%s deleted\n", pos[0], pos[1])
	return nil
}

func (x *ctlRun) mapStats(args []string) error {
	pos, err := x.sub("map stats", args, -2, nil)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usageError{fmt.Errorf("map stats takes at most one map name")}
	}
	var all broker.MapsOverview
	if printed, err := x.get("/api/v1/maps", &all); err != nil || printed {
		return err
	}
	names := all.Maps
	if len(pos) == 1 {
		names = []string{pos[0]}
	}
	members := make([]string, 0, len(all.Members))
	for m := range all.Members {
		members = append(members, m)
	}
	slices.Sort(members)
	tw := x.table()
	fmt.Fprintln(tw, "MEMBER\tPARTITIONS\tBACKUPS\tMIGRATING\tSTORE DIRTY\tMAP\tENTRIES\tBYTES\tBACKUP ENTRIES\tLAST MERGE")
	for _, m := range members {
		st := all.Members[m]
		merge := "-"
		if !st.Merge.Started.IsZero() {
			merge = fmt.Sprintf("%d/%d at %s", st.Merge.Done, st.Merge.Total, st.Merge.Started.Local().Format(time.DateTime))
		}
		for _, n := range names {
			ms := st.Maps[n]
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t%d\t%d\t%d\t%s\n", m, st.Owned, st.Backups, st.Migrating, st.StoreDirty, n, ms.Entries, ms.Bytes, ms.BackupCopies, merge)
		}
		if len(names) == 0 {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t-\t0\t0\t0\t%s\n", m, st.Owned, st.Backups, st.Migrating, st.StoreDirty, merge)
		}
	}
	_ = tw.Flush()
	for m, e := range all.Unreachable {
		fmt.Fprintf(x.stderr, "%s did not answer: %s\n", m, e)
	}
	return nil
}
