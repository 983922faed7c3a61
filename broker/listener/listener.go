// Package listener builds the MQTT listeners from configuration and guards
// them against connection abuse: every accepted connection must send
// CONNECT within a deadline (slow-loris), and new connections can be
// rate-limited per listener (connect floods).
package listener

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/time/rate"

	"github.com/mendmq/mendmq/broker/config"
)

// ErrRateLimited is returned (and logged by mochi) for a connection closed
// because the listener's connect rate was exceeded.
var ErrRateLimited = errors.New("listener: connect rate exceeded, connection closed")

// ErrClosed is returned for a connection accepted while the listener was
// closing; it is closed at once.
var ErrClosed = errors.New("listener: closing, connection closed")

// Reasons passed to Guard.Refused.
const (
	RefusedConnectRate    = "connect_rate"    // over mqtt.max_connect_rate
	RefusedMaxConnections = "max_connections" // CONNACK server busy (mqtt.max_connections)
	RefusedNotAuthorized  = "not_authorized"  // CONNACK bad user name or password
)

// Guard limits what a connection may do before CONNECT completes.
type Guard struct {
	// ConnectTimeout bounds the time from accept to a complete CONNECT.
	// mochi replaces the deadline with the keep-alive one once the client
	// is attached.
	ConnectTimeout time.Duration
	// RatePerSecond of new connections (burst equal); 0 = unlimited.
	RatePerSecond int
	// Refused is called with a reason for every connection refused here.
	Refused func(reason string)
	// CloseClients, if set, disconnects the listener's clients when it
	// closes instead of mochi's own function (mochix.DisconnectListener
	// avoids a deadlock in it).
	CloseClients listeners.CloseFn
	// Wrap, if set, replaces each accepted connection before mochi gets it
	// (the deadline above is armed on the result); the guard still closes
	// the connection it accepted.
	Wrap func(net.Conn) net.Conn
}

// Build returns the mochi listener for one config entry, wrapped by g.
// The id is "<type><index>", e.g. tcp0.
func Build(i int, lc config.ListenerConfig, g Guard) (listeners.Listener, error) {
	id := fmt.Sprintf("%s%d", lc.Type, i)
	mc := listeners.Config{ID: id, Address: lc.Address}
	var l listeners.Listener
	switch lc.Type {
	case "tcp":
		l = listeners.NewTCP(mc)
	case "tls":
		tc, err := TLSConfig(lc)
		if err != nil {
			return nil, fmt.Errorf("mqtt.listeners[%d]: %w", i, err)
		}
		mc.TLSConfig = tc
		l = listeners.NewTCP(mc)
	case "ws":
		// mochi's WebSocket listener binds only when it starts serving, so
		// a busy port would merely be logged: probe it now to fail at start.
		probe, err := net.Listen("tcp", lc.Address)
		if err != nil {
			return nil, fmt.Errorf("mqtt.listeners[%d]: bind %s: %w", i, lc.Address, err)
		}
		_ = probe.Close()
		l = listeners.NewWebsocket(mc)
	default:
		return nil, fmt.Errorf("mqtt.listeners[%d].type: unknown type %q", i, lc.Type)
	}
	gl := &guarded{Listener: l, g: g, conns: map[net.Conn]struct{}{}}
	if g.RatePerSecond > 0 {
		gl.limiter = rate.NewLimiter(rate.Limit(g.RatePerSecond), g.RatePerSecond)
	}
	return gl, nil
}

// TLSConfig loads the certificate (and client CA for mutual TLS) of a tls
// listener.
func TLSConfig(lc config.ListenerConfig) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(lc.CertFile, lc.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load cert_file %s / key_file %s: %w", lc.CertFile, lc.KeyFile, err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if lc.ClientCAFile != "" {
		pem, err := os.ReadFile(lc.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("read client_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("client_ca_file %s: no PEM certificates found", lc.ClientCAFile)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

type guarded struct {
	listeners.Listener
	g       Guard
	limiter *rate.Limiter

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // connections being served
	closed bool
}

// Serve wraps the establish callback: refuse over-rate connections, arm
// the CONNECT deadline, track the connection until mochi is done with it,
// and count the refusals mochi makes (it returns them as errors).
func (l *guarded) Serve(establish listeners.EstablishFn) {
	l.Listener.Serve(func(id string, c net.Conn) error {
		if l.limiter != nil && !l.limiter.Allow() {
			_ = c.Close()
			l.refused(RefusedConnectRate)
			return ErrRateLimited
		}
		if !l.track(c) {
			_ = c.Close()
			return ErrClosed
		}
		defer l.untrack(c)
		mc := c
		if l.g.Wrap != nil {
			mc = l.g.Wrap(c)
		}
		if l.g.ConnectTimeout > 0 {
			_ = mc.SetDeadline(time.Now().Add(l.g.ConnectTimeout))
		}
		err := establish(id, mc)
		// mochi returns these two only when it refused CONNECT with a
		// CONNACK (server.go attachClient); other errors end connections
		// that were accepted.
		switch {
		case errors.Is(err, packets.ErrServerBusy):
			l.refused(RefusedMaxConnections)
		case errors.Is(err, packets.ErrBadUsernameOrPassword):
			l.refused(RefusedNotAuthorized)
		}
		return err
	})
}

func (l *guarded) refused(reason string) {
	if l.g.Refused != nil {
		l.g.Refused(reason)
	}
}

func (l *guarded) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *guarded) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

// Close stops accepting and lets mochi disconnect its clients (v5:
// DISCONNECT 0x8B), then closes every connection still open. mochi's
// shutdown waits for all connection goroutines, and it only knows clients
// that completed CONNECT: one that has not sent it yet would hold shutdown
// up until mqtt.connect_timeout.
func (l *guarded) Close(closeClients listeners.CloseFn) {
	if l.g.CloseClients != nil {
		closeClients = l.g.CloseClients
	}
	l.Listener.Close(closeClients)
	l.mu.Lock()
	l.closed = true
	conns := make([]net.Conn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}
