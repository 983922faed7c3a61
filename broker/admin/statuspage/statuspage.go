// Package statuspage is the admin server's page for people: one HTML file,
// a stylesheet and a script, embedded in the binary (no CDN: it works
// offline and behind firewalls). The script polls GET /api/v1/overview and
// GET /api/v1/policies/conflicts with relative URLs, so the page also works
// behind a reverse proxy under a path prefix.
//
// It shows the members with state, reachability and per-peer traffic, a
// chart of message rates, this node's counters, the merge policies with
// their calls and failures, and the parked conflicts of every node (with
// resolve and drop buttons; the nodes that could not be asked are named).
// It has places for the netsplit banner (overview "netsplit") and the map
// table (overview "maps"), rendered once the API fills them.
package statuspage

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var files embed.FS

// Mounter is where the page is mounted (the admin server).
type Mounter interface {
	Handle(pattern string, h http.Handler)
}

// Mount serves the page at "/" and its assets under "/ui/".
func Mount(m Mounter) {
	static, err := fs.Sub(files, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	assets := http.FileServerFS(static)
	m.Handle("GET /{$}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:")
		http.ServeFileFS(w, r, static, "index.html")
	}))
	m.Handle("GET /ui/", http.StripPrefix("/ui/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		assets.ServeHTTP(w, r)
	})))
}
