package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
)

// publisher sends the messages of one pair. Calls come from one goroutine.
type publisher interface {
	// Publish sends one message. It first waits while the in-flight window (QoS 1/2)
	// is full, then calls fill(payload) so the send timestamp written there excludes
	// that wait, then sends. The client does not keep payload after Publish returns.
	Publish(ctx context.Context, payload []byte, fill func([]byte)) error
	// Flush writes out anything the client buffered (before the caller sleeps).
	Flush() error
	// Drain flushes buffered writes and waits until every QoS 1/2 message sent so far
	// is acknowledged, or ctx ends.
	Drain(ctx context.Context) error
	// Close disconnects; it waits for the client's goroutines to stop.
	Close() error
}

// subscriber receives the messages of one pair and hands each payload to the
// onMessage callback given when it was dialled. Callbacks for one subscriber never run
// concurrently, and the payload is valid only during the callback.
type subscriber interface {
	// Close disconnects; once it returns no callback is running or will run.
	Close() error
}

// engine dials benchmark clients with one MQTT client implementation.
type engine interface {
	// Name identifies the implementation in reports.
	Name() string
	// DialPublisher connects a client that publishes to topic.
	DialPublisher(ctx context.Context, addr, clientID, topic string) (publisher, error)
	// DialSubscriber connects a client, subscribes to topic and returns once the
	// subscription is acknowledged. onError receives a connection failure after that.
	DialSubscriber(ctx context.Context, addr, clientID, topic string, onMessage func([]byte), onError func(error)) (subscriber, error)
}

// engineOptions are the MQTT parameters every engine needs.
type engineOptions struct {
	Version    byte // 4 = MQTT 3.1.1, 5 = MQTT 5
	QoS        byte
	Inflight   int // per-publisher window of unacknowledged QoS 1/2 messages
	FlushEvery int // raw engine: messages buffered per write
	// ReceiveMax is the v5 CONNECT Receive Maximum; 0 omits the property.
	ReceiveMax uint16
}

// newEngine returns the engine named kind ("raw" or "paho").
func newEngine(kind string, o engineOptions) (engine, error) {
	switch kind {
	case clientRaw:
		return &rawEngine{opts: o}, nil
	case clientPaho:
		if o.Version == 5 {
			return &paho5Engine{opts: o}, nil
		}
		return &paho3Engine{opts: o}, nil
	}
	return nil, fmt.Errorf("client %q: want %q or %q", kind, clientRaw, clientPaho)
}

// Client implementations selectable with -client.
const (
	clientRaw  = "raw"
	clientPaho = "paho"
)

// brokerAddr turns a broker URL (tcp://127.0.0.1:1883, mqtt://localhost:1883 or a bare
// host:port) into a dialable host:port. Only loopback targets are accepted: this tool
// generates enough traffic to be a nuisance anywhere else.
func brokerAddr(raw string) (string, error) {
	s := strings.TrimSpace(raw)
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return "", fmt.Errorf("broker URL %q: %w", raw, err)
		}
		if u.Scheme != "tcp" && u.Scheme != "mqtt" {
			return "", fmt.Errorf("broker URL %q: scheme %q not supported, use tcp://", raw, u.Scheme)
		}
		s = u.Host
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", fmt.Errorf("broker URL %q: want tcp://127.0.0.1:PORT: %w", raw, err)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() || !ip.Is4() {
		return "", fmt.Errorf("broker URL %q: only 127.0.0.0/8 targets are allowed", raw)
	}
	if port == "" || port == "0" {
		return "", fmt.Errorf("broker URL %q: needs a port", raw)
	}
	return net.JoinHostPort(ip.String(), port), nil
}
