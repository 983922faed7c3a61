package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// paho3Engine dials MQTT 3.1.1 clients with github.com/eclipse/paho.mqtt.golang.
type paho3Engine struct{ opts engineOptions }

func (e *paho3Engine) Name() string { return clientPaho + "-v3" }

// options builds paho client options: clean session, no reconnects (a dropped
// connection must show up as an error, not be papered over), in-order callbacks.
func (e *paho3Engine) options(addr, clientID string) *mqtt.ClientOptions {
	return mqtt.NewClientOptions().
		AddBroker("tcp://" + addr).
		SetClientID(clientID).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetResumeSubs(false).
		SetKeepAlive(rawKeepalive).
		SetConnectTimeout(10 * time.Second).
		SetOrderMatters(true)
}

// waitToken waits for a paho token within ctx.
func waitToken(ctx context.Context, t mqtt.Token) error {
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

type paho3Publisher struct {
	c      mqtt.Client
	topic  string
	qos    byte
	window []mqtt.Token // ring of unacknowledged publishes, oldest at head
	head   int
	n      int
	last   mqtt.Token // for QoS 0: the last publish, written when its token completes
}

func (e *paho3Engine) DialPublisher(ctx context.Context, addr, clientID, topic string) (publisher, error) {
	c := mqtt.NewClient(e.options(addr, clientID))
	if err := waitToken(ctx, c.Connect()); err != nil {
		return nil, fmt.Errorf("connect %s as %s: %w", addr, clientID, err)
	}
	return &paho3Publisher{c: c, topic: topic, qos: e.opts.QoS, window: make([]mqtt.Token, max(e.opts.Inflight, 1))}, nil
}

func (p *paho3Publisher) Publish(ctx context.Context, payload []byte, fill func([]byte)) error {
	if p.qos > 0 && p.n == len(p.window) {
		if err := p.waitOldest(ctx); err != nil {
			return err
		}
	}
	fill(payload)
	// paho writes the payload from another goroutine after Publish returns: copy it.
	t := p.c.Publish(p.topic, p.qos, false, append([]byte(nil), payload...))
	if p.qos == 0 {
		p.last = t
		select {
		case <-t.Done():
			return t.Error()
		default:
			return nil
		}
	}
	p.window[(p.head+p.n)%len(p.window)] = t
	p.n++
	return nil
}

func (p *paho3Publisher) waitOldest(ctx context.Context) error {
	t := p.window[p.head]
	p.window[p.head] = nil
	p.head = (p.head + 1) % len(p.window)
	p.n--
	if err := waitToken(ctx, t); err != nil {
		return fmt.Errorf("publish to %s: %w", p.topic, err)
	}
	return nil
}

// Flush is a no-op: paho writes every packet as it is published.
func (p *paho3Publisher) Flush() error { return nil }

func (p *paho3Publisher) Drain(ctx context.Context) error {
	if p.last != nil {
		if err := waitToken(ctx, p.last); err != nil {
			return fmt.Errorf("publish to %s: %w", p.topic, err)
		}
	}
	for p.n > 0 {
		if err := p.waitOldest(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (p *paho3Publisher) Close() error {
	p.c.Disconnect(250)
	return nil
}

type paho3Subscriber struct {
	c     mqtt.Client
	guard callbackGuard
}

func (e *paho3Engine) DialSubscriber(ctx context.Context, addr, clientID, topic string, onMessage func([]byte), onError func(error)) (subscriber, error) {
	opts := e.options(addr, clientID).SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		if onError != nil {
			onError(err)
		}
	})
	c := mqtt.NewClient(opts)
	if err := waitToken(ctx, c.Connect()); err != nil {
		return nil, fmt.Errorf("connect %s as %s: %w", addr, clientID, err)
	}
	s := &paho3Subscriber{c: c}
	t := c.Subscribe(topic, e.opts.QoS, func(_ mqtt.Client, m mqtt.Message) { s.guard.call(onMessage, m.Payload()) })
	if err := waitToken(ctx, t); err != nil {
		c.Disconnect(0)
		return nil, fmt.Errorf("subscribe %s: %w", topic, err)
	}
	granted, ok := t.(*mqtt.SubscribeToken).Result()[topic]
	if !ok || granted != e.opts.QoS {
		c.Disconnect(0)
		return nil, fmt.Errorf("subscribe %s: granted QoS %d, asked %d", topic, granted, e.opts.QoS)
	}
	return s, nil
}

func (s *paho3Subscriber) Close() error {
	s.c.Disconnect(250)
	s.guard.close()
	return nil
}

// callbackGuard keeps the subscriber contract (no callback runs after Close returns)
// for libraries whose disconnect may return while a handler is still running.
type callbackGuard struct {
	mu     sync.Mutex
	closed bool
}

func (g *callbackGuard) call(f func([]byte), b []byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closed {
		f(b)
	}
}

func (g *callbackGuard) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}
