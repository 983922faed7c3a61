package registry

import (
	"github.com/mendmq/mendmq/cluster/hlc"
	"github.com/mendmq/mendmq/cluster/internal/wire"
)

// appendTakeover encodes a registration's answer: its stamp, the node the
// session was taken from ("" if none) and the exported session.
func appendTakeover(b []byte, t Takeover) []byte {
	b = t.At.AppendBinary(b)
	b = wire.AppendStr(b, t.From)
	return append(b, t.Session...)
}

func decodeTakeover(b []byte) (Takeover, error) {
	at, n, err := hlc.Decode(b)
	if err != nil {
		return Takeover{}, err
	}
	r := wire.NewReader(b[n:])
	t := Takeover{At: at, From: r.Str(wire.MaxName)}
	if r.Err() != nil {
		return Takeover{}, r.Err()
	}
	if rest := r.Rest(); len(rest) > 0 {
		t.Session = rest
	}
	return t, nil
}

// appendSessionMsgs encodes messages for a session: client id, then the
// broker's encoding of the messages.
func appendSessionMsgs(b []byte, clientID string, msgs []byte) []byte {
	b = wire.AppendStr(b, clientID)
	return append(b, msgs...)
}

func decodeSessionMsgs(b []byte) (clientID string, msgs []byte, err error) {
	r := wire.NewReader(b)
	clientID = r.Str(wire.MaxName)
	if r.Err() == nil && clientID == "" {
		r.Fail("empty client id")
	}
	return clientID, r.Rest(), r.Err()
}

// claim is a registration (at the leader) or takeover (at the owner)
// request: node wants clientID; clean says whether the session is needed;
// At is the claimant's stamp of the CONNECT.
type claim struct {
	ClientID string
	Node     string
	Clean    bool
	At       hlc.Timestamp
}

func (c claim) append(b []byte) []byte {
	var f byte
	if c.Clean {
		f = 1
	}
	b = append(b, f)
	b = wire.AppendStr(b, c.ClientID)
	b = wire.AppendStr(b, c.Node)
	return c.At.AppendBinary(b)
}

func decodeClaim(b []byte) (claim, error) {
	r := wire.NewReader(b)
	c := claim{Clean: r.Byte()&1 == 1}
	c.ClientID = r.Str(wire.MaxName)
	c.Node = r.Str(wire.MaxName)
	if r.Err() != nil {
		return c, r.Err()
	}
	at, n, err := hlc.Decode(r.Rest())
	if err != nil {
		return claim{}, err
	}
	c.At = at
	if rest := r.Rest()[n:]; len(rest) != 0 {
		r.Fail("%d trailing bytes", len(rest))
	}
	return c, r.Err()
}
