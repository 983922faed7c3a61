// Package admin is the operator HTTP server: health, readiness, Prometheus
// metrics, the /api/v1 JSON API and the status page. Other parts of the
// broker mount their endpoints with Handle before Start.
//
// Security (auth.go): with a token file or a client CA configured, every
// request except /healthz and /readyz must authenticate. Those two stay
// open because they are what load balancers, Docker and Kubernetes probes
// call, which carry no credentials, and they reveal only "up" and "ready".
// Request bodies are bounded by MaxBody for every endpoint.
package admin

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// MaxBody bounds a request body (1 MiB); a larger one is refused with 413
// before any handler acts on it.
const MaxBody = 1 << 20

// Options configure a Server.
type Options struct {
	// Address is host:port to bind (admin.address).
	Address string
	// TokenFile, if set, holds the bearer token (admin.token_file).
	TokenFile string
	// CertFile and KeyFile turn on HTTPS (admin.tls.cert_file/key_file).
	CertFile, KeyFile string
	// ClientCAFile turns on mutual TLS (admin.tls.client_ca_file).
	ClientCAFile string
	// Registry is served at /metrics; the server registers its own
	// counter (mendmq_admin_requests_refused_total) there.
	Registry *prometheus.Registry
	// Ready decides /readyz: nil means ready.
	Ready func() error
	// Log receives server errors and refused requests (at debug).
	Log *slog.Logger
}

// Server is the admin HTTP server.
type Server struct {
	opts    Options
	mux     *http.ServeMux
	srv     *http.Server
	ln      net.Listener
	log     *slog.Logger
	auth    *authenticator
	tls     *tls.Config
	refused *prometheus.CounterVec
}

// New returns a server for o. It reads the token and certificate files
// now, so a bad file stops the node at start with the key named.
func New(o Options) (*Server, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Ready == nil {
		o.Ready = func() error { return nil }
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	s := &Server{opts: o, mux: http.NewServeMux(), log: o.Log}
	a, err := newAuthenticator(o.TokenFile, o.ClientCAFile != "")
	if err != nil {
		return nil, err
	}
	s.auth = a
	if o.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("admin.tls.cert_file: load %s and %s: %w", o.CertFile, o.KeyFile, err)
		}
		s.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if o.ClientCAFile != "" {
			pem, err := os.ReadFile(o.ClientCAFile)
			if err != nil {
				return nil, fmt.Errorf("admin.tls.client_ca_file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("admin.tls.client_ca_file: %s holds no PEM certificate", o.ClientCAFile)
			}
			// Verified when given, required by the handler: probes reach
			// /healthz and /readyz without a certificate.
			s.tls.ClientAuth = tls.VerifyClientCertIfGiven
			s.tls.ClientCAs = pool
		}
	} else if o.ClientCAFile != "" {
		return nil, errors.New("admin.tls.client_ca_file: mutual TLS needs admin.tls.cert_file and admin.tls.key_file")
	}
	s.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mendmq_admin_requests_refused_total",
		Help: "Admin API requests refused for lack of valid credentials (no token, wrong token, no client certificate).",
	}, []string{"reason"})
	if err := o.Registry.Register(s.refused); err != nil {
		return nil, fmt.Errorf("register admin metrics: %w", err)
	}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	s.mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := s.opts.Ready(); err != nil {
			WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": err.Error()})
			return
		}
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(o.Registry, promhttp.HandlerOpts{Registry: o.Registry}))
	// Unknown paths answer JSON, not the mux's text 404.
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, http.StatusNotFound, fmt.Errorf("no endpoint %s %s (see the README's operator surface)", r.Method, r.URL.Path))
	})
	return s, nil
}

// Handle mounts h at pattern (net/http ServeMux syntax, e.g.
// "GET /api/v1/cluster"). Call before Start.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// TLS reports whether the server speaks HTTPS.
func (s *Server) TLS() bool { return s.tls != nil }

// ServeHTTP authenticates the request (open paths aside), bounds its body
// and dispatches it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !openPath(r) {
		if reason := s.auth.check(r); reason != "" {
			s.refused.WithLabelValues(reason).Inc()
			s.log.Debug("admin request refused", "reason", reason, "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			s.auth.challenge(w, r)
			WriteError(w, http.StatusUnauthorized, fmt.Errorf("unauthorized: %s (%s)", reason, s.auth.hint()))
			return
		}
	}
	if r.Body != nil {
		r.Body = http.MaxBytesReader(w, r.Body, MaxBody)
	}
	w.Header().Set("X-Content-Type-Options", "nosniff")
	s.mux.ServeHTTP(w, r)
}

// openPath reports whether r may skip authentication: the probes.
func openPath(r *http.Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) && (r.URL.Path == "/healthz" || r.URL.Path == "/readyz")
}

// Start binds and serves in the background.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.opts.Address)
	if err != nil {
		return fmt.Errorf("admin.address: bind %s: %w", s.opts.Address, err)
	}
	if s.tls != nil {
		ln = tls.NewListener(ln, s.tls)
	}
	s.ln = ln
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin server stopped", "error", err)
		}
	}()
	return nil
}

// Addr is the bound address (useful with port 0).
func (s *Server) Addr() string {
	if s.ln == nil {
		return s.opts.Address
	}
	return s.ln.Addr().String()
}

// URL is the base URL of the bound server: http:// or https:// and Addr.
func (s *Server) URL() string {
	if s.tls != nil {
		return "https://" + s.Addr()
	}
	return "http://" + s.Addr()
}

// Shutdown stops the server, waiting for in-flight requests until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.srv == nil {
		return nil
	}
	return s.srv.Shutdown(ctx)
}

// WriteJSON writes v as JSON with status code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// WriteError writes {"error": msg} with status code.
func WriteError(w http.ResponseWriter, code int, err error) {
	WriteJSON(w, code, map[string]string{"error": err.Error()})
}
