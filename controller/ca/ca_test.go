package ca

import (
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/trust"
)

// TestVerifyClientCache: VerifyClient remembers a certificate it accepted
// only within the certificate's validity, and never accepts one of
// another CA or a kind it does not know.
func TestVerifyClientCache(t *testing.T) {
	now := time.Now()
	c, _, err := LoadOrCreate(Config{Dir: t.TempDir(), Names: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := LoadOrCreate(Config{Dir: t.TempDir(), Names: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	k, err := trust.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := trust.NewCSR(k, "device")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := c.Sign(csr, trust.KindDevice, "dev_1", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // the second answer comes from the cache
		kind, id, err := c.VerifyClient(cert, now)
		if err != nil || kind != trust.KindDevice || id != "dev_1" {
			t.Fatalf("verify %d: %s %s %v; want device dev_1", i, kind, id, err)
		}
	}
	if _, _, err := c.VerifyClient(cert, now.Add(2*time.Hour)); err == nil {
		t.Fatal("an expired certificate passed (from the cache)")
	}
	if _, _, err := c.VerifyClient(cert, now.Add(-time.Hour)); err == nil {
		t.Fatal("a certificate not yet valid passed (from the cache)")
	}
	if _, _, err := other.VerifyClient(cert, now); err == nil {
		t.Fatal("another CA accepted the certificate")
	}
	if _, _, err := c.VerifyClient(cert, now); err != nil {
		t.Fatalf("after the refusals: %v", err)
	}
}
