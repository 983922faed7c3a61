package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"os"
	"strings"
)

// authenticator decides whether a request may use the admin server: with
// a token configured, "Authorization: Bearer TOKEN" (or HTTP Basic with
// the token as password, which browsers send after their login prompt);
// with mutual TLS, a client certificate the TLS handshake verified. Either
// one admits a request. With neither configured every request is admitted
// (config validation allows that only on loopback).
type authenticator struct {
	token [sha256.Size]byte // digest of the token; zero when unset
	has   bool              // a token is configured
	mtls  bool              // a verified client certificate admits
}

func newAuthenticator(tokenFile string, mtls bool) (*authenticator, error) {
	a := &authenticator{mtls: mtls}
	if tokenFile == "" {
		return a, nil
	}
	b, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("admin.token_file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return nil, fmt.Errorf("admin.token_file: %s is empty; write a token of at least 16 bytes into it", tokenFile)
	}
	a.token, a.has = sha256.Sum256([]byte(tok)), true
	return a, nil
}

// check returns "" when r is authenticated, else why not (a metric label).
func (a *authenticator) check(r *http.Request) string {
	if !a.has && !a.mtls {
		return ""
	}
	if a.mtls && r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		return ""
	}
	if !a.has {
		return "no_client_certificate"
	}
	given, ok := credential(r)
	if !ok {
		if a.mtls {
			return "no_credentials"
		}
		return "no_token"
	}
	// Comparing digests keeps the comparison constant-time whatever the
	// lengths.
	sum := sha256.Sum256([]byte(given))
	if subtle.ConstantTimeCompare(sum[:], a.token[:]) != 1 {
		return "wrong_token"
	}
	return ""
}

// credential extracts the token from a Bearer or Basic Authorization
// header (Basic: any user name, the token as password).
func credential(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	if scheme, rest, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(rest), true
	}
	if _, pass, ok := r.BasicAuth(); ok {
		return pass, true
	}
	return "", false
}

// challenge sets WWW-Authenticate on a 401: browsers asking for a page
// get a Basic challenge (their login prompt, token as password); API
// clients a Bearer one.
func (a *authenticator) challenge(w http.ResponseWriter, r *http.Request) {
	if !a.has {
		return
	}
	if strings.HasPrefix(r.URL.Path, "/api/") || r.URL.Path == "/metrics" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="mendmq admin"`)
		return
	}
	w.Header().Set("WWW-Authenticate", `Basic realm="mendmq admin", charset="UTF-8"`)
}

// hint says what the client should send.
func (a *authenticator) hint() string {
	switch {
	case a.has && a.mtls:
		return "present a client certificate signed by admin.tls.client_ca_file, or send Authorization: Bearer <the token in admin.token_file>"
	case a.mtls:
		return "present a client certificate signed by admin.tls.client_ca_file"
	}
	return "send Authorization: Bearer <the token in admin.token_file>"
}
