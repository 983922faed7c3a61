package admin_test

import (
	"crypto/tls"
	"encoding/base64"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mendmq/mendmq/broker/admin"
	"github.com/mendmq/mendmq/broker/brokertest"
)

const token = "s3cret-token-0123456789"

// start runs an admin server with o on 127.0.0.1 and one test endpoint
// that echoes a decoded JSON body.
func start(t *testing.T, o admin.Options) *admin.Server {
	t.Helper()
	o.Address = "127.0.0.1:0"
	o.Registry = prometheus.NewRegistry()
	s, err := admin.New(o)
	if err != nil {
		t.Fatalf("admin.New: %v", err)
	}
	s.Handle("POST /api/v1/echo", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var v struct {
			Name string `json:"name"`
		}
		if !admin.DecodeJSON(w, r, &v) {
			return
		}
		admin.WriteJSON(w, http.StatusOK, v)
	}))
	s.Handle("GET /api/v1/thing", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		admin.WriteJSON(w, http.StatusOK, map[string]bool{"ok": true})
	}))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(t.Context()) })
	return s
}

func writeToken(t *testing.T, tok string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

type req struct {
	method, path, auth, body string
}

func do(t *testing.T, c *http.Client, base string, r req) (int, string) {
	t.Helper()
	hr, err := http.NewRequest(r.method, base+r.path, strings.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	if r.auth != "" {
		hr.Header.Set("Authorization", r.auth)
	}
	resp, err := c.Do(hr)
	if err != nil {
		t.Fatalf("%s %s: %v", r.method, r.path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// TestTokenAuth: with admin.token_file every endpoint but the probes
// needs the token; a refusal is a JSON 401 that names the fix, and counted.
func TestTokenAuth(t *testing.T) {
	s := start(t, admin.Options{TokenFile: writeToken(t, token)})
	base := s.URL()
	c := &http.Client{Timeout: brokertest.Timeout}
	for _, tc := range []struct {
		name string
		r    req
		want int
	}{
		{"healthz open", req{"GET", "/healthz", "", ""}, 200},
		{"readyz open", req{"GET", "/readyz", "", ""}, 200},
		{"no token", req{"GET", "/api/v1/thing", "", ""}, 401},
		{"wrong token", req{"GET", "/api/v1/thing", "Bearer wrong-token-0123456789", ""}, 401},
		{"token prefix", req{"GET", "/api/v1/thing", "Bearer " + token[:len(token)-1], ""}, 401},
		{"empty bearer", req{"GET", "/api/v1/thing", "Bearer ", ""}, 401},
		{"metrics need it", req{"GET", "/metrics", "", ""}, 401},
		{"status page needs it", req{"GET", "/", "", ""}, 401},
		{"unknown path needs it", req{"GET", "/api/v1/nope", "", ""}, 401},
		{"probe by POST is not open", req{"POST", "/healthz", "", ""}, 401},
		{"bearer", req{"GET", "/api/v1/thing", "Bearer " + token, ""}, 200},
		{"bearer scheme is case-insensitive", req{"GET", "/api/v1/thing", "bearer " + token, ""}, 200},
		{"basic with the token as password", req{"GET", "/api/v1/thing", basic("anyone", token), ""}, 200},
		{"basic wrong password", req{"GET", "/api/v1/thing", basic("anyone", "nope"), ""}, 401},
		{"metrics with token", req{"GET", "/metrics", "Bearer " + token, ""}, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := do(t, c, base, tc.r)
			if code != tc.want {
				t.Fatalf("%s %s = %d %s, want %d", tc.r.method, tc.r.path, code, body, tc.want)
			}
			if code == 401 && !strings.Contains(body, `"error"`) || code == 401 && !strings.Contains(body, "admin.token_file") {
				t.Errorf("401 body %q: want a JSON error naming admin.token_file", body)
			}
		})
	}
}

func TestChallenge(t *testing.T) {
	s := start(t, admin.Options{TokenFile: writeToken(t, token)})
	for path, want := range map[string]string{"/": "Basic", "/api/v1/thing": "Bearer"} {
		resp, err := http.Get(s.URL() + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, want) {
			t.Errorf("GET %s: WWW-Authenticate %q, want %s (browsers prompt on Basic)", path, got, want)
		}
	}
}

func TestRefusalsCounted(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, err := admin.New(admin.Options{Address: "127.0.0.1:0", TokenFile: writeToken(t, token), Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(t.Context())
	c := &http.Client{Timeout: brokertest.Timeout}
	do(t, c, s.URL(), req{"GET", "/metrics", "", ""})
	do(t, c, s.URL(), req{"GET", "/metrics", "Bearer x", ""})
	if n := refusedCount(t, reg, "no_token"); n != 1 {
		t.Errorf("refused{no_token} = %v, want 1", n)
	}
	if n := refusedCount(t, reg, "wrong_token"); n != 1 {
		t.Errorf("refused{wrong_token} = %v, want 1", n)
	}
}

func refusedCount(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != "mendmq_admin_requests_refused_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestMutualTLS: with admin.tls.client_ca_file a request needs a client
// certificate from that CA (or the token, when one is configured too);
// the probes stay reachable without one.
func TestMutualTLS(t *testing.T) {
	f := brokertest.WriteTLSFiles(t)
	s := start(t, admin.Options{CertFile: f.CertFile, KeyFile: f.KeyFile, ClientCAFile: f.CAFile})
	if !strings.HasPrefix(s.URL(), "https://") {
		t.Fatalf("URL %s, want https", s.URL())
	}
	noCert := &http.Client{Timeout: brokertest.Timeout, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: f.CA}}}
	withCert := &http.Client{Timeout: brokertest.Timeout, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: f.CA, Certificates: []tls.Certificate{f.Client}}}}
	if code, body := do(t, noCert, s.URL(), req{"GET", "/api/v1/thing", "", ""}); code != 401 || !strings.Contains(body, "client certificate") {
		t.Errorf("no client certificate: %d %s, want 401 naming the client certificate", code, body)
	}
	if code, _ := do(t, noCert, s.URL(), req{"GET", "/readyz", "", ""}); code != 200 {
		t.Errorf("/readyz without a client certificate = %d, want 200 (probes)", code)
	}
	if code, body := do(t, withCert, s.URL(), req{"GET", "/api/v1/thing", "", ""}); code != 200 {
		t.Errorf("with a client certificate: %d %s, want 200", code, body)
	}
	// A certificate from another CA fails the handshake.
	other := brokertest.WriteTLSFiles(t)
	foreign := &http.Client{Timeout: brokertest.Timeout, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: f.CA, Certificates: []tls.Certificate{other.Client}}}}
	if resp, err := foreign.Get(s.URL() + "/api/v1/thing"); err == nil {
		resp.Body.Close()
		t.Errorf("a client certificate of another CA got %d, want a failed handshake", resp.StatusCode)
	}
	// Plain HTTP to the TLS port gets nothing useful.
	if resp, err := (&http.Client{Timeout: brokertest.Timeout}).Get("http://" + s.Addr() + "/api/v1/thing"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Error("plain HTTP to the TLS admin server got 200")
		}
	}
}

func TestMutualTLSOrToken(t *testing.T) {
	f := brokertest.WriteTLSFiles(t)
	s := start(t, admin.Options{CertFile: f.CertFile, KeyFile: f.KeyFile, ClientCAFile: f.CAFile, TokenFile: writeToken(t, token)})
	noCert := &http.Client{Timeout: brokertest.Timeout, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: f.CA}}}
	if code, _ := do(t, noCert, s.URL(), req{"GET", "/api/v1/thing", "", ""}); code != 401 {
		t.Errorf("neither certificate nor token: %d, want 401", code)
	}
	if code, _ := do(t, noCert, s.URL(), req{"GET", "/api/v1/thing", "Bearer " + token, ""}); code != 200 {
		t.Errorf("token without certificate: %d, want 200", code)
	}
}

func TestNewRefusesBadFiles(t *testing.T) {
	f := brokertest.WriteTLSFiles(t)
	empty := writeToken(t, "  ")
	for _, tc := range []struct {
		name string
		o    admin.Options
		want string
	}{
		{"missing token file", admin.Options{TokenFile: "/nonexistent/token"}, "admin.token_file"},
		{"empty token file", admin.Options{TokenFile: empty}, "admin.token_file"},
		{"client CA without cert", admin.Options{ClientCAFile: f.CAFile}, "admin.tls.client_ca_file"},
		{"bad key pair", admin.Options{CertFile: f.CertFile, KeyFile: f.ClientKeyFile}, "admin.tls.cert_file"},
		{"CA file without PEM", admin.Options{CertFile: f.CertFile, KeyFile: f.KeyFile, ClientCAFile: empty}, "admin.tls.client_ca_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.Address = "127.0.0.1:0"
			_, err := admin.New(tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("admin.New: %v, want an error naming %s", err, tc.want)
			}
		})
	}
}

// TestBodies: DecodeJSON refuses what is not exactly one known JSON
// object, and the server bounds every body.
func TestBodies(t *testing.T) {
	s := start(t, admin.Options{})
	c := &http.Client{Timeout: brokertest.Timeout}
	huge := `{"name":"` + strings.Repeat("x", admin.MaxBody) + `"}`
	for _, tc := range []struct {
		name, body string
		want       int
		msg        string
	}{
		{"ok", `{"name":"a"}`, 200, `"a"`},
		{"empty", ``, 400, "empty body"},
		{"malformed", `{"name":`, 400, "malformed JSON"},
		{"wrong type", `{"name":1}`, 400, "malformed JSON"},
		{"unknown field", `{"name":"a","nmae":"b"}`, 400, "unknown field"},
		{"two values", `{"name":"a"}{"name":"b"}`, 400, "after the JSON value"},
		{"huge", huge, 413, "over"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := do(t, c, s.URL(), req{"POST", "/api/v1/echo", "", tc.body})
			if code != tc.want || !strings.Contains(body, tc.msg) {
				t.Fatalf("= %d %s, want %d containing %q", code, body, tc.want, tc.msg)
			}
		})
	}
}

func TestUnknownAPIPathIsJSON(t *testing.T) {
	s := start(t, admin.Options{})
	code, body := do(t, &http.Client{Timeout: brokertest.Timeout}, s.URL(), req{"GET", "/api/v1/nope", "", ""})
	if code != 404 || !strings.Contains(body, `"error"`) {
		t.Fatalf("= %d %s, want a JSON 404", code, body)
	}
}
