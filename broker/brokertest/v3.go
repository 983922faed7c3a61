package brokertest

import (
	"crypto/tls"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt3 "github.com/eclipse/paho.mqtt.golang"
)

// V3Options shape a v3.1.1 client's CONNECT. The zero value is a
// clean-session, anonymous client with a 30 s keep-alive.
type V3Options struct {
	Username string
	Password string
	// KeepSession sends Clean Session = 0.
	KeepSession bool
	// KeepAlive; 0 means 30 s.
	KeepAlive time.Duration
	// Will, if WillTopic is set, is the last will.
	WillTopic   string
	WillPayload string
	WillQoS     byte
	WillRetain  bool
	// TLS configures tls:// and wss:// URLs.
	TLS *tls.Config
}

// V3 is a connected MQTT v3.1.1 client (paho.mqtt.golang, no automatic
// reconnect) that queues every message it receives, including those
// resent from a resumed session before any Subscribe call.
type V3 struct {
	mqtt3.Client
	// SessionPresent is the CONNACK flag.
	SessionPresent bool

	t        testing.TB
	id       string
	msgs     chan mqtt3.Message
	lost     chan error
	overflow atomic.Int64
	close    sync.Once
}

// ConnectV3 connects clientID to the broker at url (tcp://, tls://,
// ws://, wss://). A refusing CONNACK is returned as *ConnackError with the
// v3 return code; a connected client is closed at test cleanup.
func ConnectV3(t testing.TB, url, clientID string, o V3Options) (*V3, error) {
	t.Helper()
	c := &V3{t: t, id: clientID, msgs: make(chan mqtt3.Message, inbox), lost: make(chan error, 1)}
	keepAlive := o.KeepAlive
	if keepAlive == 0 {
		keepAlive = 30 * time.Second
	}
	opts := mqtt3.NewClientOptions().
		AddBroker(url).
		SetClientID(clientID).
		SetProtocolVersion(4).
		SetCleanSession(!o.KeepSession).
		SetKeepAlive(keepAlive).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(Timeout).
		SetWriteTimeout(Timeout).
		SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ mqtt3.Client, m mqtt3.Message) {
			select {
			case c.msgs <- m:
			default:
				c.overflow.Add(1)
			}
		}).
		SetConnectionLostHandler(func(_ mqtt3.Client, err error) {
			select {
			case c.lost <- err:
			default:
			}
		})
	if o.Username != "" {
		opts.SetUsername(o.Username)
	}
	if o.Password != "" {
		opts.SetPassword(o.Password)
	}
	if o.WillTopic != "" {
		opts.SetWill(o.WillTopic, o.WillPayload, o.WillQoS, o.WillRetain)
	}
	if o.TLS != nil {
		opts.SetTLSConfig(o.TLS)
	}
	c.Client = mqtt3.NewClient(opts)
	tok := c.Client.Connect()
	if !tok.WaitTimeout(Timeout) {
		c.Client.Disconnect(0)
		return nil, fmt.Errorf("connect v3 client %s to %s: no CONNACK within %v", clientID, url, Timeout)
	}
	ct := tok.(*mqtt3.ConnectToken)
	if rc := ct.ReturnCode(); rc != 0 {
		return nil, &ConnackError{Code: rc, Reason: fmt.Sprint(tok.Error())}
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("connect v3 client %s to %s: %w", clientID, url, err)
	}
	c.SessionPresent = ct.SessionPresent()
	t.Cleanup(func() {
		c.Close()
		if n := c.overflow.Load(); n > 0 {
			t.Errorf("v3 client %s: %d messages dropped, more than %d unread", clientID, n, inbox)
		}
	})
	return c, nil
}

// MustV3 is ConnectV3 that fails the test on any error. At most one
// options value is used.
func MustV3(t testing.TB, url, clientID string, o ...V3Options) *V3 {
	t.Helper()
	var opts V3Options
	if len(o) > 0 {
		opts = o[0]
	}
	c, err := ConnectV3(t, url, clientID, opts)
	if err != nil {
		t.Fatalf("connect v3 client %s to %s: %v", clientID, url, err)
	}
	return c
}

// Sub subscribes to one filter and returns the SUBACK return code (granted
// QoS, or 0x80 for failure). A timeout or transport error fails the test.
// See V5.Sub about packet identifiers.
func (c *V3) Sub(filter string, qos byte) byte {
	c.t.Helper()
	tok := c.Subscribe(filter, qos, nil)
	if !tok.WaitTimeout(Timeout) {
		c.t.Fatalf("v3 client %s: no SUBACK for %s within %v", c.id, filter, Timeout)
	}
	// One filter, one result; paho keys it by the filter without a
	// $share/<group>/ prefix.
	for _, rc := range tok.(*mqtt3.SubscribeToken).Result() {
		return rc
	}
	c.t.Fatalf("v3 client %s: subscribe %s: %v", c.id, filter, tok.Error())
	return 0
}

// MustSub subscribes and fails the test unless the broker granted qos.
func (c *V3) MustSub(filter string, qos byte) {
	c.t.Helper()
	if rc := c.Sub(filter, qos); rc != qos {
		c.t.Fatalf("v3 client %s: SUBACK for %s = 0x%02x, want granted QoS %d", c.id, filter, rc, qos)
	}
}

// Pub publishes and waits until the QoS flow completes (PUBACK, PUBCOMP;
// for QoS 0 until written). It returns an error rather than failing, since
// a v3 broker refuses a publish only by closing the connection.
func (c *V3) Pub(topic string, qos byte, retain bool, payload string) error {
	tok := c.Publish(topic, qos, retain, payload)
	if !tok.WaitTimeout(Timeout) {
		return fmt.Errorf("v3 client %s: publish to %s not acknowledged within %v", c.id, topic, Timeout)
	}
	return tok.Error()
}

// MustPub is Pub that fails the test on error.
func (c *V3) MustPub(topic string, qos byte, retain bool, payload string) {
	c.t.Helper()
	if err := c.Pub(topic, qos, retain, payload); err != nil {
		c.t.Fatal(err)
	}
}

// Msgs is the channel of received messages.
func (c *V3) Msgs() <-chan mqtt3.Message { return c.msgs }

// Next returns the next received message, failing the test after Timeout.
func (c *V3) Next() mqtt3.Message {
	c.t.Helper()
	select {
	case m := <-c.msgs:
		return m
	case <-time.After(Timeout):
		c.t.Fatalf("v3 client %s: no message within %v", c.id, Timeout)
		return nil
	}
}

// Until returns the messages received before the first one on topic (see
// V5.Until).
func (c *V3) Until(topic string) []mqtt3.Message {
	c.t.Helper()
	var got []mqtt3.Message
	deadline := time.After(Timeout)
	for {
		select {
		case m := <-c.msgs:
			if m.Topic() == topic {
				return got
			}
			got = append(got, m)
		case <-deadline:
			c.t.Fatalf("v3 client %s: no message on %s within %v (got %d others)", c.id, topic, Timeout, len(got))
			return nil
		}
	}
}

// WaitLost waits until the broker has closed the connection and returns
// the error paho reported.
func (c *V3) WaitLost() error {
	c.t.Helper()
	select {
	case err := <-c.lost:
		return err
	case <-time.After(Timeout):
		c.t.Fatalf("v3 client %s: connection still open after %v", c.id, Timeout)
		return nil
	}
}

// Close sends DISCONNECT (if still connected) and stops the client; safe
// to call more than once.
func (c *V3) Close() {
	c.close.Do(func() {
		if c.IsConnectionOpen() {
			c.Disconnect(uint(Timeout / time.Millisecond / 20))
		}
	})
}
