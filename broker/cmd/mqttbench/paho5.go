package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session"
	"github.com/eclipse/paho.golang/paho/session/state"
)

// paho5Engine dials MQTT 5 clients with github.com/eclipse/paho.golang.
type paho5Engine struct{ opts engineOptions }

func (e *paho5Engine) Name() string { return clientPaho + "-v5" }

// windowSession bounds the publisher's unacknowledged QoS 1/2 messages. paho.golang
// only offers a blocking Publish (window of 1) or an asynchronous one bounded by the
// broker's Receive Maximum; wrapping its session state gives any window: the publisher
// takes a slot before publishing (so the send timestamp excludes the wait) and the
// session frees it when the message's flow completes.
type windowSession struct {
	session.SessionManager
	slots chan struct{}
}

// acquire takes one in-flight slot.
func (w *windowSession) acquire(ctx context.Context) error {
	select {
	case w.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for a free in-flight slot: %w", ctx.Err())
	}
}

func (w *windowSession) PacketReceived(cp *packets.ControlPacket, ch chan<- *packets.Publish) error {
	err := w.SessionManager.PacketReceived(cp, ch)
	done := false
	switch c := cp.Content.(type) {
	case *packets.Puback, *packets.Pubcomp:
		done = true
	case *packets.Pubrec:
		done = c.ReasonCode >= 0x80 // an error PUBREC ends the exchange
	}
	if done {
		select {
		case <-w.slots:
		default:
			if err == nil {
				err = errors.New("mqttbench: acknowledgement with no message in flight")
			}
		}
	}
	return err
}

// drain takes every slot (all messages acknowledged), then frees them.
func (w *windowSession) drain(ctx context.Context) error {
	for i := 0; i < cap(w.slots); i++ {
		select {
		case w.slots <- struct{}{}:
		case <-ctx.Done():
			return fmt.Errorf("wait for %d acks: %w", len(w.slots), ctx.Err())
		}
	}
	for i := 0; i < cap(w.slots); i++ {
		<-w.slots
	}
	return nil
}

// dial connects a paho.golang client over a fresh TCP connection.
func (e *paho5Engine) dial(ctx context.Context, addr, clientID string, sess session.SessionManager, onPublish func(paho.PublishReceived) (bool, error), onError func(error)) (*paho.Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	cfg := paho.ClientConfig{
		ClientID: clientID,
		Conn:     nc,
		Session:  sess,
		OnClientError: func(err error) {
			if onError != nil {
				onError(err)
			}
		},
		OnServerDisconnect: func(d *paho.Disconnect) {
			if onError != nil {
				onError(fmt.Errorf("broker sent DISCONNECT with reason %#x", d.ReasonCode))
			}
		},
	}
	if onPublish != nil {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){onPublish}
	}
	c := paho.NewClient(cfg)
	props := &paho.ConnectProperties{}
	if e.opts.ReceiveMax > 0 {
		recvMax := e.opts.ReceiveMax
		props.ReceiveMaximum = &recvMax
	}
	ca, err := c.Connect(ctx, &paho.Connect{
		ClientID:   clientID,
		CleanStart: true,
		KeepAlive:  uint16(rawKeepalive.Seconds()),
		Properties: props,
	})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("connect %s as %s: %w", addr, clientID, err)
	}
	if ca.ReasonCode != 0 {
		nc.Close()
		return nil, fmt.Errorf("connect %s as %s: refused with reason %#x", addr, clientID, ca.ReasonCode)
	}
	return c, nil
}

type paho5Publisher struct {
	c     *paho.Client
	sess  *windowSession
	topic string
	qos   byte
}

func (e *paho5Engine) DialPublisher(ctx context.Context, addr, clientID, topic string) (publisher, error) {
	sess := &windowSession{SessionManager: state.NewInMemory(), slots: make(chan struct{}, max(e.opts.Inflight, 1))}
	c, err := e.dial(ctx, addr, clientID, sess, nil, nil)
	if err != nil {
		sess.Close()
		return nil, err
	}
	return &paho5Publisher{c: c, sess: sess, topic: topic, qos: e.opts.QoS}, nil
}

func (p *paho5Publisher) Publish(ctx context.Context, payload []byte, fill func([]byte)) error {
	if p.qos > 0 {
		if err := p.sess.acquire(ctx); err != nil {
			return err
		}
	}
	fill(payload)
	// The session keeps QoS 1/2 packets until acknowledged: give it its own copy.
	_, err := p.c.PublishWithOptions(ctx, &paho.Publish{
		Topic:   p.topic,
		QoS:     p.qos,
		Payload: append([]byte(nil), payload...),
	}, paho.PublishOptions{Method: paho.PublishMethod_AsyncSend})
	if err != nil {
		if p.qos > 0 && !errors.Is(err, paho.ErrNetworkErrorAfterStored) {
			<-p.sess.slots // never entered the session: nothing will free the slot
		}
		return fmt.Errorf("publish to %s: %w", p.topic, err)
	}
	return nil
}

// Flush is a no-op: paho writes every packet as it is published.
func (p *paho5Publisher) Flush() error { return nil }

func (p *paho5Publisher) Drain(ctx context.Context) error {
	if p.qos == 0 {
		return nil // QoS 0 publishes are written synchronously
	}
	return p.sess.drain(ctx)
}

func (p *paho5Publisher) Close() error {
	err := p.c.Disconnect(&paho.Disconnect{ReasonCode: 0})
	return errors.Join(err, p.sess.Close())
}

type paho5Subscriber struct {
	c       *paho.Client
	sess    session.SessionManager
	closing atomic.Bool
}

func (e *paho5Engine) DialSubscriber(ctx context.Context, addr, clientID, topic string, onMessage func([]byte), onError func(error)) (subscriber, error) {
	sess := state.NewInMemory()
	s := &paho5Subscriber{sess: sess}
	onPublish := func(pr paho.PublishReceived) (bool, error) {
		onMessage(pr.Packet.Payload)
		return true, nil
	}
	// paho reports the closed socket of our own Disconnect as a client error, even
	// after Disconnect returned: only errors before Close count.
	onErr := func(err error) {
		if !s.closing.Load() && onError != nil {
			onError(err)
		}
	}
	c, err := e.dial(ctx, addr, clientID, sess, onPublish, onErr)
	if err != nil {
		sess.Close()
		return nil, err
	}
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic, QoS: e.opts.QoS}}})
	if err != nil {
		c.Disconnect(&paho.Disconnect{})
		sess.Close()
		return nil, fmt.Errorf("subscribe %s: %w", topic, err)
	}
	if len(sa.Reasons) != 1 || sa.Reasons[0] != e.opts.QoS {
		c.Disconnect(&paho.Disconnect{})
		sess.Close()
		return nil, fmt.Errorf("subscribe %s: granted %x, asked QoS %d", topic, sa.Reasons, e.opts.QoS)
	}
	s.c = c
	return s, nil
}

// Close disconnects; paho's Disconnect waits for its workers, including the
// goroutine that runs OnPublishReceived.
func (s *paho5Subscriber) Close() error {
	s.closing.Store(true)
	err := s.c.Disconnect(&paho.Disconnect{ReasonCode: 0})
	return errors.Join(err, s.sess.Close())
}
