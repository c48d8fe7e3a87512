package apiclient

import (
	"strings"
	"testing"
)

// TestFailover: Failover goes round the controllers; without fallbacks it
// stays put.
func TestFailover(t *testing.T) {
	fp := "sha256:" + strings.Repeat("ab", 32)
	c, err := New(Config{URL: "https://a:8443", FallbackURLs: []string{"https://b:8443", "https://c:8443"}, Fingerprint: fp})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for range 4 {
		got = append(got, c.Failover())
	}
	if want := "https://b:8443 https://c:8443 https://a:8443 https://b:8443"; strings.Join(got, " ") != want {
		t.Fatalf("Failover sequence %v; want %s", got, want)
	}
	one, err := New(Config{URL: "https://a:8443", Fingerprint: fp})
	if err != nil {
		t.Fatal(err)
	}
	if u := one.Failover(); u != "https://a:8443" || one.URL() != u {
		t.Fatalf("Failover without fallbacks moved to %s", u)
	}
	if _, err := New(Config{URL: "https://a:8443", FallbackURLs: []string{"http://b"}, Fingerprint: fp}); err == nil {
		t.Fatal("a non-https fallback was accepted")
	}
}
