package brokertest

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// inbox is how many received messages a client buffers before it counts
// further ones as overflow (a test failure reported at cleanup).
const inbox = 4096

// V5Options shape a v5 client's CONNECT. The zero value is a clean-start,
// anonymous client with a 30 s keep-alive.
type V5Options struct {
	Username string
	Password string
	// KeepSession sends Clean Start = 0 (resume a session if one exists).
	KeepSession bool
	// SessionExpiry is the Session Expiry Interval in seconds; 0 ends the
	// session with the connection.
	SessionExpiry uint32
	// KeepAlive in seconds; 0 means 30.
	KeepAlive uint16
	// ReceiveMaximum is the Receive Maximum sent in CONNECT (0: not sent).
	ReceiveMaximum uint16
	// Will, if set, is the last will (with WillProperties, optional).
	Will           *paho.WillMessage
	WillProperties *paho.WillProperties
	// TLS configures tls:// and wss:// URLs.
	TLS *tls.Config
}

// V5 is a connected MQTT v5 client (paho.golang) that queues what it
// receives. The embedded *paho.Client gives full protocol access; the
// helpers below cover the common cases and fail the test on transport
// errors or timeouts.
type V5 struct {
	*paho.Client
	// Connack is the broker's CONNACK (SessionPresent, properties).
	Connack *paho.Connack

	t        testing.TB
	conn     net.Conn
	msgs     chan *paho.Publish
	disc     chan *paho.Disconnect
	overflow atomic.Int64
	close    sync.Once
	fenced   bool
}

// ConnectV5 connects clientID to the broker at url (see Dial). A refusing
// CONNACK is returned as *ConnackError; a connected client is closed at
// test cleanup.
func ConnectV5(t testing.TB, url, clientID string, o V5Options) (*V5, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	conn, err := Dial(ctx, url, o.TLS)
	if err != nil {
		return nil, err
	}
	c := &V5{
		t:    t,
		conn: conn,
		msgs: make(chan *paho.Publish, inbox),
		disc: make(chan *paho.Disconnect, 1),
	}
	c.Client = paho.NewClient(paho.ClientConfig{
		ClientID:      clientID,
		Conn:          conn,
		PacketTimeout: Timeout,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			select {
			case c.msgs <- pr.Packet:
			default:
				c.overflow.Add(1)
			}
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) {
			select {
			case c.disc <- d:
			default:
			}
		},
	})
	keepAlive := o.KeepAlive
	if keepAlive == 0 {
		keepAlive = 30
	}
	cp := &paho.Connect{
		ClientID:       clientID,
		KeepAlive:      keepAlive,
		CleanStart:     !o.KeepSession,
		Username:       o.Username,
		UsernameFlag:   o.Username != "",
		Password:       []byte(o.Password),
		PasswordFlag:   o.Password != "",
		WillMessage:    o.Will,
		WillProperties: o.WillProperties,
	}
	if o.SessionExpiry > 0 || o.ReceiveMaximum > 0 {
		cp.Properties = &paho.ConnectProperties{}
	}
	if o.SessionExpiry > 0 {
		exp := o.SessionExpiry
		cp.Properties.SessionExpiryInterval = &exp
	}
	if o.ReceiveMaximum > 0 {
		rm := o.ReceiveMaximum
		cp.Properties.ReceiveMaximum = &rm
	}
	ca, err := c.Client.Connect(ctx, cp)
	if err != nil {
		_ = conn.Close()
		if ca != nil && ca.ReasonCode >= 0x80 {
			ce := &ConnackError{Code: ca.ReasonCode}
			if ca.Properties != nil {
				ce.Reason = ca.Properties.ReasonString
			}
			return nil, ce
		}
		return nil, err
	}
	c.Connack = ca
	t.Cleanup(func() {
		c.Close()
		if n := c.overflow.Load(); n > 0 {
			t.Errorf("v5 client %s: %d messages dropped, more than %d unread", clientID, n, inbox)
		}
	})
	return c, nil
}

// MustV5 is ConnectV5 that fails the test on any error. At most one
// options value is used.
func MustV5(t testing.TB, url, clientID string, o ...V5Options) *V5 {
	t.Helper()
	var opts V5Options
	if len(o) > 0 {
		opts = o[0]
	}
	c, err := ConnectV5(t, url, clientID, opts)
	if err != nil {
		t.Fatalf("connect v5 client %s to %s: %v", clientID, url, err)
	}
	return c
}

// Sub subscribes to one filter and returns the SUBACK reason code (the
// granted QoS, or a refusal such as 0x87). A transport error fails the test.
//
// mochi v2.7.9 keeps the client's and its own packet identifiers in one
// space (upstream issues #519, #545): a SUBSCRIBE whose identifier equals
// one of an unacknowledged QoS 1/2 delivery to this client is refused with
// 0x91 (v3: 0x80). Subscribe before QoS 1/2 traffic to the client flows
// (retained messages included), or check the code.
func (c *V5) Sub(filter string, qos byte) byte {
	c.t.Helper()
	return c.SubWith(paho.SubscribeOptions{Topic: filter, QoS: qos})
}

// MustSub subscribes and fails the test unless the broker granted qos.
func (c *V5) MustSub(filter string, qos byte) {
	c.t.Helper()
	if rc := c.Sub(filter, qos); rc != qos {
		c.t.Fatalf("v5 client %s: SUBACK for %s = 0x%02x, want granted QoS %d", c.ClientID(), filter, rc, qos)
	}
}

// SubWith is Sub with every subscription option (no local, retain handling).
func (c *V5) SubWith(o paho.SubscribeOptions) byte {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{o}})
	if sa != nil && len(sa.Reasons) == 1 {
		return sa.Reasons[0] // paho reports a refusal as an error too
	}
	c.t.Fatalf("v5 subscribe %s: %v", o.Topic, err)
	return 0
}

// Pub publishes and returns the broker's reason code: 0 for QoS 0, the
// PUBACK reason for QoS 1, the PUBREC (refusal) or PUBCOMP reason for
// QoS 2. A transport error or timeout fails the test.
func (c *V5) Pub(topic string, qos byte, retain bool, payload string) byte {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	pr, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Retain: retain, Payload: []byte(payload)})
	if pr != nil {
		return pr.ReasonCode // paho reports a refusal as an error too
	}
	c.t.Fatalf("v5 publish to %s: %v", topic, err)
	return 0
}

// MustPub is Pub that fails the test unless the reason code is success.
func (c *V5) MustPub(topic string, qos byte, retain bool, payload string) {
	c.t.Helper()
	if rc := c.Pub(topic, qos, retain, payload); rc != 0 {
		c.t.Fatalf("v5 client %s: publish to %s: reason code 0x%02x", c.ClientID(), topic, rc)
	}
}

// Fence returns once the broker has finished processing everything this
// client sent before, delivery to subscribers included: mochi handles one
// client's packets in order but acknowledges a publish before it fans it
// out, so a PUBACK alone does not mean subscribers have it. Fence publishes
// a marker to brokertest/fence/<client id> (subscribed on first use; an ACL
// must allow it) and waits for it to come back. It returns the messages
// received before the marker.
func (c *V5) Fence() []*paho.Publish {
	c.t.Helper()
	topic := "brokertest/fence/" + c.ClientID()
	if !c.fenced {
		c.MustSub(topic, 0)
		c.fenced = true
	}
	c.MustPub(topic, 0, false, "")
	return c.Until(topic)
}

// Msgs is the channel of received messages, for tests that select on it.
func (c *V5) Msgs() <-chan *paho.Publish { return c.msgs }

// Next returns the next received message, failing the test after Timeout.
func (c *V5) Next() *paho.Publish {
	c.t.Helper()
	select {
	case m := <-c.msgs:
		return m
	case <-time.After(Timeout):
		c.t.Fatalf("v5 client %s: no message within %v", c.ClientID(), Timeout)
		return nil
	}
}

// Until returns the messages received before the first one on topic
// (consumed too). Publishing a marker to topic after the messages under
// test turns "nothing else arrives" into an event to wait for: the broker
// delivers one publisher's messages to a subscriber in order.
func (c *V5) Until(topic string) []*paho.Publish {
	c.t.Helper()
	var got []*paho.Publish
	deadline := time.After(Timeout)
	for {
		select {
		case m := <-c.msgs:
			if m.Topic == topic {
				return got
			}
			got = append(got, m)
		case <-deadline:
			c.t.Fatalf("v5 client %s: no message on %s within %v (got %d others)", c.ClientID(), topic, Timeout, len(got))
			return nil
		}
	}
}

// WaitServerDisconnect returns the DISCONNECT the broker sent, failing the
// test if none arrives within Timeout.
func (c *V5) WaitServerDisconnect() *paho.Disconnect {
	c.t.Helper()
	select {
	case d := <-c.disc:
		return d
	case <-time.After(Timeout):
		c.t.Fatalf("v5 client %s: no DISCONNECT from the broker within %v", c.ClientID(), Timeout)
		return nil
	}
}

// ServerDisconnect returns the DISCONNECT the broker sent, if any has
// arrived, without waiting.
func (c *V5) ServerDisconnect() (*paho.Disconnect, bool) {
	select {
	case d := <-c.disc:
		return d, true
	default:
		return nil, false
	}
}

// WaitClosed waits until the connection has ended for any reason (the
// broker closed it, sent DISCONNECT, or the client closed).
func (c *V5) WaitClosed() {
	c.t.Helper()
	select {
	case <-c.Done():
	case <-time.After(Timeout):
		c.t.Fatalf("v5 client %s: connection still open after %v", c.ClientID(), Timeout)
	}
}

// Drop closes the network connection without DISCONNECT, as a crashed
// client would (the broker sends the will, if any).
func (c *V5) Drop() {
	c.t.Helper()
	_ = c.conn.Close()
	c.WaitClosed()
}

// Close sends a normal DISCONNECT and waits for the client to stop; safe to
// call more than once and after the broker has closed the connection.
func (c *V5) Close() {
	c.close.Do(func() {
		select {
		case <-c.Done():
			return
		default:
		}
		_ = c.Disconnect(&paho.Disconnect{ReasonCode: 0})
		select {
		case <-c.Done():
		case <-time.After(Timeout):
			c.t.Errorf("v5 client %s: did not stop within %v of DISCONNECT", c.ClientID(), Timeout)
		}
	})
}
