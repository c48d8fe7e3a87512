package key

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func TestPrivateNeverPrints(t *testing.T) {
	p, err := NewWGPrivate()
	if err != nil {
		t.Fatal(err)
	}
	secret := p.Base64Secret()
	for _, s := range []string{fmt.Sprint(p), fmt.Sprintf("%v %+v %#v %s", p, p, p, p)} {
		if strings.Contains(s, secret) || strings.Contains(s, p.UAPIHex()) {
			t.Fatalf("private key leaked in %q", s)
		}
	}
	if _, err := json.Marshal(struct{ K WGPrivate }{p}); err == nil {
		t.Fatal("json.Marshal of a private key succeeded")
	}
}

func TestRoundTrip(t *testing.T) {
	p, _ := NewWGPrivate()
	p2, err := ParseWGPrivate(p.Base64Secret())
	if err != nil {
		t.Fatal(err)
	}
	if !p.Public().Equal(p2.Public()) {
		t.Fatal("public keys differ after round trip")
	}
	pub := p.Public()
	b, _ := json.Marshal(pub)
	var back WGPublic
	if err := json.Unmarshal(b, &back); err != nil || !back.Equal(pub) {
		t.Fatalf("json round trip: %v", err)
	}
	h, err := ParseWGPublicHex(pub.UAPIHex())
	if err != nil || !h.Equal(pub) {
		t.Fatalf("hex round trip: %v", err)
	}
}

func TestParseRejects(t *testing.T) {
	for _, s := range []string{"", "not base64!", "AAAA", strings.Repeat("A", 43) + "="} {
		if _, err := ParseWGPublic(s); err == nil {
			t.Errorf("ParseWGPublic(%q) accepted", s)
		}
	}
}
