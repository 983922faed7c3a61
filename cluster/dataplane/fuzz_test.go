package dataplane

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzFrameReader feeds arbitrary bytes to the frame decoder: it must
// never panic, never return a frame over the size limit or with invalid
// flags, and re-encoding what it decoded must decode to the same frames.
func FuzzFrameReader(f *testing.F) {
	var seed bytes.Buffer
	bw := bufio.NewWriter(&seed)
	for _, fr := range []frame{
		{typ: 1, payload: []byte("hello")},
		{typ: 2, flags: flagCall, id: 9, payload: []byte("q")},
		{typ: 2, flags: flagReply | flagError, id: 9, payload: []byte("e")},
		{typ: ctlKeepalive, flags: flagControl},
	} {
		_, _ = writeFrame(bw, &fr)
	}
	_ = bw.Flush()
	f.Add(seed.Bytes())
	f.Add([]byte{1, 0, 0, 0, 0, 5, 'a'})
	f.Add([]byte{1, 0x80, 0, 0, 0, 0})
	f.Add([]byte{1, 0, 0xff, 0xff, 0xff, 0xff})
	const max = 4096
	f.Fuzz(func(t *testing.T, in []byte) {
		fr := frameReader{r: bufio.NewReader(bytes.NewReader(in)), max: max}
		var got []frame
		for range 1000 {
			f, err := fr.next()
			if err != nil {
				if err != io.EOF && !isProtocolError(err) {
					t.Fatalf("unexpected error class: %v", err)
				}
				break
			}
			if f.bodyLen() > max || !validFlags(f.flags) {
				t.Fatalf("decoded invalid frame %+v", f)
			}
			got = append(got, f)
		}
		var out bytes.Buffer
		w := bufio.NewWriter(&out)
		for i := range got {
			if _, err := writeFrame(w, &got[i]); err != nil {
				t.Fatal(err)
			}
		}
		_ = w.Flush()
		re := frameReader{r: bufio.NewReader(&out), max: max}
		for i, want := range got {
			f, err := re.next()
			if err != nil || f.typ != want.typ || f.flags != want.flags || f.id != want.id || !bytes.Equal(f.payload, want.payload) {
				t.Fatalf("re-decoded frame %d = %+v, %v; want %+v", i, f, err, want)
			}
		}
	})
}

// FuzzAcceptHandshake plays an arbitrary dialer against the acceptor: it
// must never panic and never accept, since a valid proof needs the key
// and the acceptor's fresh nonce.
func FuzzAcceptHandshake(f *testing.F) {
	h := hello{version: protoVersion, cluster: "mendmq", from: "a", to: "b"}
	good := h.encode()
	f.Add(good)
	f.Add(append(append([]byte(nil), good...), make([]byte, macLen)...))
	f.Add([]byte("MQDP\x01\x00\x00\x00"))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	key := authKey([]byte("fuzz secret, long enough"))
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		name, err := acceptHandshake(bufio.NewReader(bytes.NewReader(in)), &out, key, "mendmq", "b", nil)
		if err == nil {
			t.Fatalf("accepted dialer %q from fuzz input", name)
		}
		if !errors.Is(err, ErrHandshake) {
			t.Fatalf("error not wrapping ErrHandshake: %v", err)
		}
	})
}

// FuzzDialHandshake plays an arbitrary acceptor against the dialer, with
// the same properties.
func FuzzDialHandshake(f *testing.F) {
	c := challenge{status: statusOK, name: "b"}
	f.Add(c.encode())
	f.Add((&challenge{status: statusReject, reason: "no"}).encode())
	f.Add(append(c.encode(), statusOK, 0))
	key := authKey([]byte("fuzz secret, long enough"))
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		err := dialHandshake(bufio.NewReader(bytes.NewReader(in)), &out, key, "mendmq", "a", "b")
		if err == nil {
			t.Fatal("dialer accepted a fuzzed acceptor")
		}
		if !errors.Is(err, ErrHandshake) {
			t.Fatalf("error not wrapping ErrHandshake: %v", err)
		}
	})
}

func TestHandshakeBetweenHonestPeers(t *testing.T) {
	key := authKey([]byte("shared secret, long enough"))
	d2a, a2d := newPipe(), newPipe()
	errc := make(chan error, 1)
	go func() {
		errc <- dialHandshake(bufio.NewReader(a2d), d2a, key, "mendmq", "a", "b")
	}()
	name, err := acceptHandshake(bufio.NewReader(d2a), a2d, key, "mendmq", "b", nil)
	if err != nil || name != "a" {
		t.Fatalf("acceptHandshake = %q, %v", name, err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("dialHandshake = %v", err)
	}
}

// pipe is an in-memory byte stream: writes never block.
type pipe struct {
	ch  chan []byte
	buf []byte
}

func newPipe() *pipe { return &pipe{ch: make(chan []byte, 16)} }

func (p *pipe) Write(b []byte) (int, error) {
	p.ch <- append([]byte(nil), b...)
	return len(b), nil
}

func (p *pipe) Read(b []byte) (int, error) {
	if len(p.buf) == 0 {
		p.buf = <-p.ch
	}
	n := copy(b, p.buf)
	p.buf = p.buf[n:]
	return n, nil
}
