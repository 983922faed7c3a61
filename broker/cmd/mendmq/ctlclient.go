package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// Exit codes of `mendmq ctl` (documented in its usage and the README).
const (
	exitOK          = 0 // the node did it
	exitServer      = 1 // the node answered with an error (4xx/5xx), or an unreadable answer
	exitUsage       = 2 // bad command line or local files (token, certificates)
	exitUnreachable = 3 // no answer: connection refused, timeout, TLS handshake failed
)

// conn holds the connection flags every ctl command accepts, before or
// after its name.
type conn struct {
	admin     string
	tokenFile string
	caFile    string
	certFile  string
	keyFile   string
	timeout   time.Duration
	json      bool
}

// envOr reads a default from the environment.
func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func defaultConn() *conn {
	return &conn{
		admin:     envOr("MENDMQ_ADMIN", "http://127.0.0.1:8080"),
		tokenFile: os.Getenv("MENDMQ_ADMIN_TOKEN_FILE"),
		caFile:    os.Getenv("MENDMQ_ADMIN_CA_FILE"),
		certFile:  os.Getenv("MENDMQ_ADMIN_CERT_FILE"),
		keyFile:   os.Getenv("MENDMQ_ADMIN_KEY_FILE"),
		timeout:   15 * time.Second,
	}
}

// register adds the connection flags to fs.
func (c *conn) register(fs *flag.FlagSet) {
	fs.StringVar(&c.admin, "admin", c.admin, "admin API base URL or host:port ($MENDMQ_ADMIN)")
	fs.StringVar(&c.tokenFile, "token-file", c.tokenFile, "file with the admin bearer token ($MENDMQ_ADMIN_TOKEN_FILE)")
	fs.StringVar(&c.caFile, "cacert", c.caFile, "PEM CA to verify an https admin server ($MENDMQ_ADMIN_CA_FILE)")
	fs.StringVar(&c.certFile, "cert", c.certFile, "PEM client certificate for mutual TLS ($MENDMQ_ADMIN_CERT_FILE)")
	fs.StringVar(&c.keyFile, "key", c.keyFile, "PEM client key for mutual TLS ($MENDMQ_ADMIN_KEY_FILE)")
	fs.DurationVar(&c.timeout, "timeout", c.timeout, "how long to wait for the node")
	fs.BoolVar(&c.json, "json", c.json, "print the API's JSON instead of a table")
}

// client is a ready-to-use admin API client.
type client struct {
	base  string
	token string
	http  *http.Client
}

// usageError is a problem with the command line or local files (exit 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }

// apiError is an answer of the node that is not a success (exit 1).
type apiError struct {
	Status int
	Msg    string
	Node   string // the "node" field of a 409 about a session elsewhere
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, http.StatusText(e.Status), e.Msg)
}

// unreachableError is a request that got no answer (exit 3).
type unreachableError struct{ err error }

func (e unreachableError) Error() string {
	return e.err.Error() + " (is the node running, and --admin right?)"
}

func (c *conn) client() (*client, error) {
	base := strings.TrimRight(c.admin, "/")
	if !strings.Contains(base, "://") {
		scheme := "http://"
		if c.caFile != "" || c.certFile != "" {
			scheme = "https://"
		}
		base = scheme + base
	}
	cl := &client{base: base}
	if c.tokenFile != "" {
		b, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return nil, usageError{fmt.Errorf("--token-file: %w", err)}
		}
		cl.token = strings.TrimSpace(string(b))
		if cl.token == "" {
			return nil, usageError{fmt.Errorf("--token-file: %s is empty", c.tokenFile)}
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if strings.HasPrefix(base, "https://") {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.caFile != "" {
			pem, err := os.ReadFile(c.caFile)
			if err != nil {
				return nil, usageError{fmt.Errorf("--cacert: %w", err)}
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, usageError{fmt.Errorf("--cacert: %s holds no PEM certificate", c.caFile)}
			}
		}
		if (c.certFile == "") != (c.keyFile == "") {
			return nil, usageError{errors.New("--cert and --key go together")}
		}
		if c.certFile != "" {
			kp, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
			if err != nil {
				return nil, usageError{fmt.Errorf("--cert/--key: %w", err)}
			}
			tc.Certificates = []tls.Certificate{kp}
		}
		tr.TLSClientConfig = tc
	}
	cl.http = &http.Client{Timeout: c.timeout, Transport: tr}
	return cl, nil
}

// do performs one request. out, if not nil, receives the decoded answer;
// raw the answer's bytes (for --json).
func (c *client) do(method, path string, body any, out any) (json.RawMessage, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return nil, usageError{err}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, unreachableError{fmt.Errorf("%s %s: %w", method, c.base+path, err)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, unreachableError{fmt.Errorf("%s %s: read answer: %w", method, c.base+path, err)}
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
			Node  string `json:"node"`
		}
		ae := &apiError{Status: resp.StatusCode, Msg: strings.TrimSpace(string(b))}
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			ae.Msg, ae.Node = e.Error, e.Node
		}
		return b, ae
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return b, fmt.Errorf("%s %s: unreadable answer: %w", method, path, err)
		}
	}
	return b, nil
}

// exitCode maps an error of a ctl command to its exit code.
func exitCode(err error) int {
	var u usageError
	var un unreachableError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &u):
		return exitUsage
	case errors.As(err, &un):
		return exitUnreachable
	}
	return exitServer
}

// printJSON indents raw API output.
func printJSON(w io.Writer, raw []byte) {
	var buf bytes.Buffer
	if json.Indent(&buf, raw, "", "  ") != nil {
		w.Write(raw)
		return
	}
	buf.WriteByte('\n')
	w.Write(buf.Bytes())
}
