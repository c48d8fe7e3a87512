package gateway

import (
	"slices"
	"testing"
)

// TestControllers: the controller tried first and the ones failed over to.
func TestControllers(t *testing.T) {
	for _, tc := range []struct {
		name          string
		cfg           Config
		wantPrimary   string
		wantFallbacks []string
	}{
		{"none", Config{}, "", nil},
		{"one", Config{ControllerURL: "https://a:8443"}, "https://a:8443", nil},
		{"list only", Config{ControllerURLs: []string{"https://a:8443", "https://b:8443"}}, "https://a:8443", []string{"https://b:8443"}},
		{"url first, repeats dropped", Config{ControllerURL: "https://b:8443", ControllerURLs: []string{"https://a:8443", "https://b:8443", "https://a:8443"}}, "https://b:8443", []string{"https://a:8443"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, f := tc.cfg.controllers()
			if p != tc.wantPrimary || !slices.Equal(f, tc.wantFallbacks) {
				t.Fatalf("controllers() = %q, %q; want %q, %q", p, f, tc.wantPrimary, tc.wantFallbacks)
			}
		})
	}
}
