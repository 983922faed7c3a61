package listener_test

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/mendmq/mendmq/broker/brokertest"
	"github.com/mendmq/mendmq/broker/config"
	"github.com/mendmq/mendmq/broker/listener"
)

func TestBuild(t *testing.T) {
	files := brokertest.WriteTLSFiles(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	for _, tc := range []struct {
		name     string
		i        int
		lc       config.ListenerConfig
		wantID   string
		wantErr  string
		protocol string
	}{
		{name: "tcp", i: 3, lc: config.ListenerConfig{Type: "tcp", Address: "127.0.0.1:0"}, wantID: "tcp3", protocol: "tcp"},
		{name: "tls", i: 0, lc: config.ListenerConfig{Type: "tls", Address: "127.0.0.1:0", CertFile: files.CertFile, KeyFile: files.KeyFile}, wantID: "tls0", protocol: "tcp"},
		{name: "ws", i: 1, lc: config.ListenerConfig{Type: "ws", Address: brokertest.FreeAddr(t)}, wantID: "ws1", protocol: "ws"},
		{name: "unknown type", i: 2, lc: config.ListenerConfig{Type: "quic", Address: "127.0.0.1:0"}, wantErr: "mqtt.listeners[2].type"},
		{name: "tls without files", i: 0, lc: config.ListenerConfig{Type: "tls", Address: "127.0.0.1:0", CertFile: "/nonexistent.pem", KeyFile: "/nonexistent-key.pem"}, wantErr: "mqtt.listeners[0]: load cert_file"},
		{name: "ws on a busy port", i: 4, lc: config.ListenerConfig{Type: "ws", Address: busy.Addr().String()}, wantErr: "mqtt.listeners[4]: bind"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := listener.Build(tc.i, tc.lc, listener.Guard{})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Build error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			if l.ID() != tc.wantID || l.Protocol() != tc.protocol {
				t.Errorf("ID %q protocol %q, want %q %q", l.ID(), l.Protocol(), tc.wantID, tc.protocol)
			}
		})
	}
}

func TestTLSConfig(t *testing.T) {
	files := brokertest.WriteTLSFiles(t)
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.txt")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}

	tc, err := listener.TLSConfig(config.ListenerConfig{CertFile: files.CertFile, KeyFile: files.KeyFile})
	if err != nil {
		t.Fatal(err)
	}
	if len(tc.Certificates) != 1 || tc.MinVersion != tls.VersionTLS12 || tc.ClientAuth != tls.NoClientCert {
		t.Errorf("server TLS config: %d certificates, min version %x, client auth %v", len(tc.Certificates), tc.MinVersion, tc.ClientAuth)
	}
	tc, err = listener.TLSConfig(config.ListenerConfig{CertFile: files.CertFile, KeyFile: files.KeyFile, ClientCAFile: files.CAFile})
	if err != nil {
		t.Fatal(err)
	}
	if tc.ClientAuth != tls.RequireAndVerifyClientCert || tc.ClientCAs == nil {
		t.Errorf("mutual TLS config: client auth %v, client CAs %v", tc.ClientAuth, tc.ClientCAs)
	}
	for _, bad := range []struct {
		lc   config.ListenerConfig
		want string
	}{
		{config.ListenerConfig{CertFile: files.CertFile, KeyFile: files.CertFile}, "key_file"},
		{config.ListenerConfig{CertFile: files.CertFile, KeyFile: files.KeyFile, ClientCAFile: notPEM}, "no PEM certificates"},
		{config.ListenerConfig{CertFile: files.CertFile, KeyFile: files.KeyFile, ClientCAFile: filepath.Join(dir, "missing.pem")}, "client_ca_file"},
	} {
		if _, err := listener.TLSConfig(bad.lc); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("TLSConfig(%+v) error = %v, want one containing %q", bad.lc, err, bad.want)
		}
	}
}

// served runs a guarded TCP listener on 127.0.0.1 whose connections are
// handled by establish; it is closed at cleanup.
func served(t *testing.T, g listener.Guard, establish listeners.EstablishFn) listeners.Listener {
	t.Helper()
	l, err := listener.Build(0, config.ListenerConfig{Type: "tcp", Address: "127.0.0.1:0"}, g)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Init(brokertest.Logger(t)); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Serve(establish)
	}()
	t.Cleanup(func() {
		l.Close(func(string) {})
		<-done
	})
	return l
}

// refusals records Guard.Refused calls.
type refusals struct {
	mu      sync.Mutex
	reasons map[string]int
}

func (r *refusals) add(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reasons == nil {
		r.reasons = map[string]int{}
	}
	r.reasons[reason]++
}

func (r *refusals) get(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reasons[reason]
}

// holdOpen is an establish function that reads until the connection ends,
// like mochi waiting for CONNECT, and counts the connections it served.
type holdOpen struct {
	mu     sync.Mutex
	served int
	errs   []error
}

func (h *holdOpen) establish(_ string, c net.Conn) error {
	h.mu.Lock()
	h.served++
	h.mu.Unlock()
	_, err := io.ReadAll(c)
	h.mu.Lock()
	h.errs = append(h.errs, err)
	h.mu.Unlock()
	return err
}

func (h *holdOpen) counts() (served, ended int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.served, len(h.errs)
}

func TestGuardRateLimit(t *testing.T) {
	const rate, n = 3, 12
	var r refusals
	var h holdOpen
	l := served(t, listener.Guard{RatePerSecond: rate, Refused: r.add}, h.establish)
	start := time.Now()
	var conns []net.Conn
	for range n {
		conns = append(conns, brokertest.DialRaw(t, l.Address()))
	}
	elapsed := time.Since(start)
	brokertest.Eventually(t, "every connection served or refused", func() bool {
		served, _ := h.counts()
		return served+r.get(listener.RefusedConnectRate) == n
	})
	served, _ := h.counts()
	if maxServed := rate + int(rate*elapsed.Seconds()) + 1; served < rate || served > maxServed {
		t.Errorf("served %d of %d connections in %v, want %d to %d", served, n, elapsed, rate, maxServed)
	}
	// Refused connections are closed by the listener.
	closed := 0
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); errors.Is(err, io.EOF) {
			closed++
		}
	}
	if closed != n-served {
		t.Errorf("%d connections closed by the listener, want the %d refused", closed, n-served)
	}
}

func TestGuardConnectTimeout(t *testing.T) {
	const timeout = 100 * time.Millisecond
	type result struct {
		err  error
		took time.Duration
	}
	results := make(chan result, 1)
	l := served(t, listener.Guard{ConnectTimeout: timeout}, func(_ string, c net.Conn) error {
		start := time.Now()
		_, err := io.ReadFull(c, make([]byte, 2)) // the client sends one byte
		results <- result{err, time.Since(start)}
		return err
	})
	c := brokertest.DialRaw(t, l.Address())
	if _, err := c.Write([]byte{0x10}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-results:
		if !errors.Is(r.err, os.ErrDeadlineExceeded) {
			t.Errorf("read error %v, want a deadline error", r.err)
		}
		if r.took < timeout-20*time.Millisecond || r.took > 10*timeout {
			t.Errorf("deadline hit after %v, want about %v", r.took, timeout)
		}
	case <-time.After(brokertest.Timeout):
		t.Fatal("connection without CONNECT was never timed out")
	}
}

func TestGuardCloseEndsPendingConnections(t *testing.T) {
	var h holdOpen
	l, err := listener.Build(0, config.ListenerConfig{Type: "tcp", Address: "127.0.0.1:0"}, listener.Guard{ConnectTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Init(slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	go l.Serve(h.establish)
	for range 3 {
		brokertest.DialRaw(t, l.Address())
	}
	brokertest.Eventually(t, "three connections served", func() bool { served, _ := h.counts(); return served == 3 })

	closedClients := ""
	start := time.Now()
	l.Close(func(id string) { closedClients = id })
	if closedClients != "tcp0" {
		t.Errorf("Close called closeClients(%q), want tcp0", closedClients)
	}
	// mochi waits for these before its Close returns; without the guard
	// closing them they would wait for connect_timeout (an hour here).
	brokertest.Eventually(t, "pending connections to end", func() bool { _, ended := h.counts(); return ended == 3 })
	if took := time.Since(start); took > time.Second {
		t.Errorf("pending connections ended %v after Close", took)
	}
}
