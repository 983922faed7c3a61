package brokertest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/gorilla/websocket"
)

// ConnackError is returned by ConnectV5 and ConnectV3 when the broker
// answered CONNECT with a refusal. Code is the v5 reason code (0x80 and
// above) or the v3.1.1 return code (1 to 5).
type ConnackError struct {
	Code   byte
	Reason string // v5 reason string, if the broker sent one
}

func (e *ConnackError) Error() string {
	return fmt.Sprintf("connection refused: CONNACK code 0x%02x %s", e.Code, e.Reason)
}

// RefusedCode returns the CONNACK code of a refused connection, and false
// when err is not a refusal (nil, or a network error).
func RefusedCode(err error) (byte, bool) {
	var ce *ConnackError
	if errors.As(err, &ce) {
		return ce.Code, true
	}
	return 0, false
}

// Dial opens the network connection for an MQTT client to a URL of Node.URL
// form: tcp:// (or mqtt://), tls:// (ssl://, mqtts://), ws:// or wss://.
// tc is used for TLS and WebSocket-over-TLS; nil means the defaults. The
// returned connection is safe for paho.golang's concurrent writers.
func Dial(ctx context.Context, rawURL string, tc *tls.Config) (net.Conn, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("parse broker URL %q: %w", rawURL, err)
	}
	switch u.Scheme {
	case "tcp", "mqtt":
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", rawURL, err)
		}
		return c, nil
	case "tls", "ssl", "mqtts":
		d := tls.Dialer{Config: tc}
		c, err := d.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", rawURL, err)
		}
		// tls.Conn writes are not safe for concurrent use; paho locks a
		// conn that implements sync.Locker.
		return packets.NewThreadSafeConn(c), nil
	case "ws", "wss":
		d := *websocket.DefaultDialer
		d.TLSClientConfig = tc
		d.Subprotocols = []string{"mqtt"}
		ws, resp, err := d.DialContext(ctx, rawURL, nil)
		if resp != nil && resp.Body != nil {
			_ = resp.Body.Close()
		}
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", rawURL, err)
		}
		return &wsConn{ws: ws}, nil
	}
	return nil, fmt.Errorf("broker URL %q: scheme %q is not tcp, tls, ws or wss", rawURL, u.Scheme)
}

// wsConn carries an MQTT byte stream over binary WebSocket messages, as
// MQTT over WebSockets requires [MQTT-6.0.0-1]: each Write is one message,
// Read concatenates messages.
type wsConn struct {
	ws *websocket.Conn
	sync.Mutex
	r  io.Reader
	rm sync.Mutex
}

var _ net.Conn = (*wsConn)(nil)

// Lock and Unlock (from the embedded mutex) are what paho uses to serialize
// its writers; Write is called with the lock held.
func (c *wsConn) Write(p []byte) (int, error) {
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) Read(p []byte) (int, error) {
	c.rm.Lock()
	defer c.rm.Unlock()
	for {
		if c.r == nil {
			typ, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if typ != websocket.BinaryMessage {
				return 0, fmt.Errorf("websocket: got message type %d, MQTT needs binary", typ)
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (c *wsConn) Close() error                       { return c.ws.Close() }
func (c *wsConn) LocalAddr() net.Addr                { return c.ws.LocalAddr() }
func (c *wsConn) RemoteAddr() net.Addr               { return c.ws.RemoteAddr() }
func (c *wsConn) SetReadDeadline(t time.Time) error  { return c.ws.SetReadDeadline(t) }
func (c *wsConn) SetWriteDeadline(t time.Time) error { return c.ws.SetWriteDeadline(t) }
func (c *wsConn) SetDeadline(t time.Time) error {
	return errors.Join(c.ws.SetReadDeadline(t), c.ws.SetWriteDeadline(t))
}
