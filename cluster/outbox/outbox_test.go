package outbox_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/mendmq/mendmq/cluster/durable"
	"github.com/mendmq/mendmq/cluster/outbox"
)

func TestBoundsAndOrder(t *testing.T) {
	o, err := outbox.New(outbox.Config{MaxMessages: 3, MaxBytes: 10})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := o.Hold("b", []byte(fmt.Sprint("m", i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.Hold("b", []byte("x")); !errors.Is(err, outbox.ErrFull) {
		t.Fatalf("4th message: %v, want ErrFull", err)
	}
	if err := o.Hold("c", []byte("12345678901")); !errors.Is(err, outbox.ErrFull) {
		t.Fatalf("11 bytes: %v, want ErrFull", err)
	}
	got := o.Peek("b", 2, 100)
	if len(got) != 2 || string(got[0].Payload) != "m0" || string(got[1].Payload) != "m1" {
		t.Fatalf("peek %v", got)
	}
	if one := o.Peek("b", 10, 1); len(one) != 1 {
		t.Fatalf("peek with a byte bound below one message: %d, want 1", len(one))
	}
	if err := o.Remove("b", got[1].Seq); err != nil {
		t.Fatal(err)
	}
	if n, b := o.Len("b"); n != 1 || b != 2 {
		t.Fatalf("len %d %d", n, b)
	}
	if err := o.Hold("b", []byte("m3")); err != nil {
		t.Fatal(err)
	}
	rest := o.Peek("b", 10, 100)
	if len(rest) != 2 || string(rest[0].Payload) != "m2" || string(rest[1].Payload) != "m3" || rest[1].Seq <= rest[0].Seq {
		t.Fatalf("after remove: %v", rest)
	}
	if n, _ := o.Drop("b"); n != 2 || len(o.Peers()) != 0 {
		t.Fatalf("drop %d, peers %v", n, o.Peers())
	}
}

// TestDurable: held messages survive a restart in order, delivered ones
// stay delivered.
func TestDurable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	db, err := durable.Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	o, err := outbox.New(outbox.Config{Store: db.Outbox()})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 { // past 256: seqs must sort numerically
		peer := []string{"b", "bb"}[i%2]
		if err := o.Hold(peer, []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	first := o.Peek("b", 10, 1<<20)
	if err := o.Remove("b", first[9].Seq); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = durable.Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	o, err = outbox.New(outbox.Config{Store: db.Outbox()})
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := o.Len("b"); n != 140 {
		t.Fatalf("b holds %d after restart, want 140", n)
	}
	if n, _ := o.Len("bb"); n != 150 {
		t.Fatalf("bb holds %d after restart, want 150", n)
	}
	msgs := o.Peek("b", 1000, 1<<20)
	for i, m := range msgs {
		if want := fmt.Sprint(20 + 2*i); string(m.Payload) != want {
			t.Fatalf("b[%d] = %s, want %s", i, m.Payload, want)
		}
	}
	if err := o.Hold("b", []byte("new")); err != nil {
		t.Fatal(err)
	}
	if last := o.Peek("b", 1000, 1<<20); last[len(last)-1].Seq <= msgs[len(msgs)-1].Seq {
		t.Fatal("a new message's seq is not after the restored ones")
	}
}

func FuzzParseKey(f *testing.F) {
	f.Add(outbox.Key("n1", 7))
	f.Add([]byte{0, 1, 2})
	f.Fuzz(func(t *testing.T, k []byte) {
		peer, seq, err := outbox.ParseKey(k)
		if err != nil {
			return
		}
		if string(outbox.Key(peer, seq)) != string(k) {
			t.Fatalf("key %x does not round-trip", k)
		}
	})
}
