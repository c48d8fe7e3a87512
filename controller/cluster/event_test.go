package cluster

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"math/big"
	"reflect"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/trust"
)

func sampleEvent() Event {
	return Event{
		Origin: "ctl-a", Epoch: 42, Seq: 7, Kind: KindRevoke, Body: json.RawMessage(`{"ids":["gr_1"]}`),
		Expires: time.UnixMilli(time.Now().Add(time.Minute).UnixMilli()).UTC(),
	}
}

func TestEventRoundTrip(t *testing.T) {
	ca := newTestCA(t)
	cert := ca.issue(t, trust.KindController, "ctl-a")
	ev := sampleEvent()
	raw, err := encodeEvent(ev, cert.PrivateKey.(crypto.Signer))
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeEvent(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Event, ev) {
		t.Errorf("decoded %+v, want %+v", got.Event, ev)
	}
	if err := verifyEvent(got, cert.Leaf); err != nil {
		t.Errorf("verify: %v", err)
	}
	other := ca.issue(t, trust.KindController, "ctl-b")
	if err := verifyEvent(got, other.Leaf); err == nil {
		t.Error("verified against another controller's certificate")
	}
	// Every byte is covered by the signature or the framing.
	for i := range raw {
		bad := append([]byte(nil), raw...)
		bad[i] ^= 0x01
		e, err := decodeEvent(bad)
		if err == nil && verifyEvent(e, cert.Leaf) == nil {
			t.Fatalf("flipping byte %d went unnoticed", i)
		}
	}
}

func TestEventSignatureKeyTypes(t *testing.T) {
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for name, key := range map[string]crypto.Signer{"ed25519": edKey, "rsa": rsaKey} {
		t.Run(name, func(t *testing.T) {
			tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x"},
				NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
			if err != nil {
				t.Fatal(err)
			}
			cert, _ := x509.ParseCertificate(der)
			raw, err := encodeEvent(sampleEvent(), key)
			if err != nil {
				t.Fatal(err)
			}
			e, err := decodeEvent(raw)
			if err != nil {
				t.Fatal(err)
			}
			if err := verifyEvent(e, cert); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestEncodeEventRefuses(t *testing.T) {
	ca := newTestCA(t)
	key := ca.issue(t, trust.KindController, "ctl-a").PrivateKey.(crypto.Signer)
	for name, edit := range map[string]func(*Event){
		"bad origin": func(e *Event) { e.Origin = "a/b" },
		"bad kind":   func(e *Event) { e.Kind = "Grant Push" },
		"long body":  func(e *Event) { e.Body = make(json.RawMessage, MaxBodyBytes+1) },
	} {
		ev := sampleEvent()
		edit(&ev)
		if _, err := encodeEvent(ev, key); err == nil {
			t.Errorf("%s: encoded", name)
		}
	}
	ev := sampleEvent()
	ev.Body = make(json.RawMessage, MaxBodyBytes+1)
	if _, err := encodeEvent(ev, key); !errors.Is(err, ErrTooLarge) {
		t.Errorf("long body: %v, want ErrTooLarge", err)
	}
}

func TestStateRoundTrip(t *testing.T) {
	msgs := [][]byte{[]byte("one"), []byte("two"), {}}
	got, err := decodeState(encodeState(msgs))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || string(got[0]) != "one" || string(got[1]) != "two" || len(got[2]) != 0 {
		t.Errorf("got %q", got)
	}
	tooMany := make([][]byte, maxStateEvents+1)
	if _, err := decodeState(encodeState(tooMany)); err == nil {
		t.Error("decoded a state over the event limit")
	}
}

// A largest-possible revocation set fits memberlist's limit on user state
// (20 MB, net.go maxPushStateBytes) with room to spare.
func TestStateSizeBound(t *testing.T) {
	if maxStateBytes > 4<<20 {
		t.Errorf("maxStateBytes = %d", maxStateBytes)
	}
	// And an event of the largest size fits a gossip packet: 1400 bytes
	// less framing (compound header 2 + entry 2 + user type 1), the label
	// (2 + len) and encryption (45 at most).
	limit := 1400 - 2 - 2 - 1 - (2 + len(gossipLabel)) - 45
	realistic := 2 + 1 + maxNodeNameLen + 8 + 8 + 8 + 1 + maxKindLen + 2 + MaxBodyBytes + 2 + 72
	if realistic > limit {
		t.Errorf("a largest event with a P-256 signature is %d bytes; a packet fits %d", realistic, limit)
	}
}

func FuzzDecodeEvent(f *testing.F) {
	ca := newTestCA(f)
	cert := ca.issue(f, trust.KindController, "ctl-a")
	raw, err := encodeEvent(sampleEvent(), cert.PrivateKey.(crypto.Signer))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add(raw[:len(raw)/2])
	f.Add([]byte{msgEvent, wireVersion})
	f.Add([]byte{})
	f.Add([]byte{msgEvent, wireVersion, 0xff, 'a'})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeEvent(b)
		if err != nil {
			if !errors.Is(err, errMalformed) {
				t.Fatalf("error %v does not wrap errMalformed", err)
			}
			return
		}
		if !ValidNodeName(e.Origin) || !validKind(e.Kind) || e.Seq == 0 || len(e.Body) > MaxBodyBytes || !json.Valid(e.Body) {
			t.Fatalf("accepted a bad event: %+v", e.Event)
		}
		if string(e.raw) != string(b) || e.signed > len(e.raw) {
			t.Fatalf("raw form differs from the input")
		}
		_ = verifyEvent(e, cert.Leaf) // must not panic
	})
}

func FuzzDecodeState(f *testing.F) {
	ca := newTestCA(f)
	cert := ca.issue(f, trust.KindController, "ctl-a")
	raw, err := encodeEvent(sampleEvent(), cert.PrivateKey.(crypto.Signer))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(encodeState([][]byte{raw, raw}))
	f.Add(encodeState(nil))
	f.Add([]byte{msgState, wireVersion, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		msgs, err := decodeState(b)
		if err != nil {
			return
		}
		if len(msgs) > maxStateEvents {
			t.Fatalf("%d events", len(msgs))
		}
		for _, m := range msgs {
			if len(m) > maxEventBytes {
				t.Fatalf("event of %d bytes", len(m))
			}
			_, _ = decodeEvent(m)
		}
	})
}
