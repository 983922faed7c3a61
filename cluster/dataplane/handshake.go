package dataplane

import (
	"bufio"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
)

// Handshake messages (see the package documentation for the sequence).
const (
	protoVersion = 1
	nonceLen     = 32
	macLen       = sha256.Size
	maxNameLen   = 255
)

var magic = [4]byte{'M', 'Q', 'D', 'P'}

// Handshake status codes.
const (
	statusOK     = 0
	statusReject = 1
)

// ErrHandshake wraps every handshake failure: wrong magic or version,
// another cluster, unexpected node name, failed authentication,
// rejection by the peer, or a timeout.
var ErrHandshake = errors.New("dataplane: handshake failed")

// hello is the dialer's first message.
type hello struct {
	version uint8
	cluster string
	from    string // dialer's node name
	to      string // node name the dialer expects to reach
	nonce   [nonceLen]byte
}

// challenge is the acceptor's answer to a hello.
type challenge struct {
	status uint8
	reason string // if status != statusOK
	name   string // acceptor's node name
	nonce  [nonceLen]byte
	mac    [macLen]byte // acceptor's proof
}

func appendString(b []byte, s string) []byte {
	return append(append(b, byte(len(s))), s...)
}

func (h *hello) encode() []byte {
	b := append([]byte(nil), magic[:]...)
	b = append(b, h.version)
	b = appendString(b, h.cluster)
	b = appendString(b, h.from)
	b = appendString(b, h.to)
	return append(b, h.nonce[:]...)
}

func (c *challenge) encode() []byte {
	b := append([]byte(nil), magic[:]...)
	b = append(b, c.status)
	if c.status != statusOK {
		return appendString(b, c.reason)
	}
	b = appendString(b, c.name)
	b = append(b, c.nonce[:]...)
	return append(b, c.mac[:]...)
}

func encodeResult(status uint8, reason string) []byte {
	return appendString([]byte{status}, reason)
}

// hsReader decodes handshake fields from a stream; the first error
// sticks.
type hsReader struct {
	r   io.Reader
	err error
}

func (h *hsReader) bytes(n int) []byte {
	if h.err != nil {
		return make([]byte, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(h.r, b); err != nil {
		h.err = err
	}
	return b
}

func (h *hsReader) byte1() byte { return h.bytes(1)[0] }

func (h *hsReader) string() string {
	n := int(h.byte1())
	return string(h.bytes(n))
}

func (h *hsReader) magic() {
	if m := h.bytes(len(magic)); h.err == nil && [4]byte(m) != magic {
		h.err = fmt.Errorf("%w: not a mendmq data-plane peer (bad magic %q)", ErrHandshake, m)
	}
}

func readHello(r io.Reader) (hello, error) {
	hr := &hsReader{r: r}
	var h hello
	hr.magic()
	h.version = hr.byte1()
	h.cluster = hr.string()
	h.from = hr.string()
	h.to = hr.string()
	copy(h.nonce[:], hr.bytes(nonceLen))
	return h, hr.err
}

func readChallenge(r io.Reader) (challenge, error) {
	hr := &hsReader{r: r}
	var c challenge
	hr.magic()
	c.status = hr.byte1()
	if hr.err == nil && c.status != statusOK {
		c.reason = hr.string()
		return c, hr.err
	}
	c.name = hr.string()
	copy(c.nonce[:], hr.bytes(nonceLen))
	copy(c.mac[:], hr.bytes(macLen))
	return c, hr.err
}

func readResult(r io.Reader) (status uint8, reason string, err error) {
	hr := &hsReader{r: r}
	status = hr.byte1()
	reason = hr.string()
	return status, reason, hr.err
}

// authKey derives the HMAC key from the shared secret, so the same
// secret can also key memberlist's AES without the two uses mixing.
func authKey(secret []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("mendmq dataplane auth v1"))
	return m.Sum(nil)
}

// proof is one side's HMAC over the whole handshake transcript; role
// separates the dialer's proof from the acceptor's so that neither can
// be reflected back.
func proof(key []byte, role, cluster, dialer, acceptor string, dn, an [nonceLen]byte) [macLen]byte {
	m := hmac.New(sha256.New, key)
	var b []byte
	b = appendString(b, role)
	b = appendString(b, cluster)
	b = appendString(b, dialer)
	b = appendString(b, acceptor)
	b = append(b, dn[:]...)
	b = append(b, an[:]...)
	m.Write(b)
	var out [macLen]byte
	copy(out[:], m.Sum(nil))
	return out
}

func newNonce() ([nonceLen]byte, error) {
	var n [nonceLen]byte
	_, err := rand.Read(n[:])
	return n, err
}

// dialHandshake runs the dialer's side, reading through br (which the
// connection then keeps using for frames, as the acceptor may send
// frames right after its result) and writing to w; the caller sets the
// deadline. It returns nil once the acceptor has accepted.
func dialHandshake(br *bufio.Reader, w io.Writer, key []byte, cluster, self, peer string) error {
	dn, err := newNonce()
	if err != nil {
		return err
	}
	h := hello{version: protoVersion, cluster: cluster, from: self, to: peer, nonce: dn}
	if _, err := w.Write(h.encode()); err != nil {
		return fmt.Errorf("%w: send hello: %w", ErrHandshake, err)
	}
	c, err := readChallenge(br)
	if err != nil {
		return fmt.Errorf("%w: read challenge: %w", ErrHandshake, err)
	}
	if c.status != statusOK {
		return fmt.Errorf("%w: rejected by %s: %s", ErrHandshake, peer, c.reason)
	}
	if c.name != peer {
		return fmt.Errorf("%w: expected node %q at this address, found %q", ErrHandshake, peer, c.name)
	}
	want := proof(key, "acceptor", cluster, self, peer, dn, c.nonce)
	if !hmac.Equal(want[:], c.mac[:]) {
		return fmt.Errorf("%w: %s failed authentication (cluster.secret_key differs)", ErrHandshake, peer)
	}
	mine := proof(key, "dialer", cluster, self, peer, dn, c.nonce)
	if _, err := w.Write(mine[:]); err != nil {
		return fmt.Errorf("%w: send proof: %w", ErrHandshake, err)
	}
	status, reason, err := readResult(br)
	if err != nil {
		return fmt.Errorf("%w: read result: %w", ErrHandshake, err)
	}
	if status != statusOK {
		return fmt.Errorf("%w: rejected by %s: %s", ErrHandshake, peer, reason)
	}
	return nil
}

// acceptHandshake runs the acceptor's side, reading through r (the
// connection's frame reader afterwards) and writing to w, and returns
// the authenticated dialer's name; the caller sets the deadline.
// checkDialer, if set, may refuse the name the dialer claims (a TLS
// client certificate for another node) before any proof is exchanged.
func acceptHandshake(r *bufio.Reader, w io.Writer, key []byte, cluster, self string, checkDialer func(name string) error) (string, error) {
	h, err := readHello(r)
	if err != nil {
		return "", fmt.Errorf("%w: read hello: %w", ErrHandshake, err)
	}
	reject := func(reason string) (string, error) {
		c := challenge{status: statusReject, reason: reason}
		_, _ = w.Write(c.encode())
		return "", fmt.Errorf("%w: %s (dialer %q)", ErrHandshake, reason, h.from)
	}
	switch {
	case h.version != protoVersion:
		return reject(fmt.Sprintf("protocol version %d not supported (want %d)", h.version, protoVersion))
	case h.cluster != cluster:
		return reject(fmt.Sprintf("cluster %q, not %q", h.cluster, cluster))
	case h.to != self:
		return reject(fmt.Sprintf("this is node %q, not %q", self, h.to))
	case h.from == "" || h.from == self:
		return reject(fmt.Sprintf("bad dialer name %q", h.from))
	}
	if checkDialer != nil {
		if err := checkDialer(h.from); err != nil {
			return reject(err.Error())
		}
	}
	an, err := newNonce()
	if err != nil {
		return "", err
	}
	c := challenge{status: statusOK, name: self, nonce: an, mac: proof(key, "acceptor", cluster, h.from, self, h.nonce, an)}
	if _, err := w.Write(c.encode()); err != nil {
		return "", fmt.Errorf("%w: send challenge: %w", ErrHandshake, err)
	}
	var got [macLen]byte
	if _, err := io.ReadFull(r, got[:]); err != nil {
		return "", fmt.Errorf("%w: read proof of %q: %w", ErrHandshake, h.from, err)
	}
	want := proof(key, "dialer", cluster, h.from, self, h.nonce, an)
	if !hmac.Equal(want[:], got[:]) {
		_, _ = w.Write(encodeResult(statusReject, "authentication failed"))
		return "", fmt.Errorf("%w: %q failed authentication (cluster.secret_key differs)", ErrHandshake, h.from)
	}
	if _, err := w.Write(encodeResult(statusOK, "")); err != nil {
		return "", fmt.Errorf("%w: send result: %w", ErrHandshake, err)
	}
	return h.from, nil
}
