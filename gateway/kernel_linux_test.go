package gateway

import (
	"net/netip"
	"testing"
	"time"
)

func TestTableName(t *testing.T) {
	for _, tc := range []struct{ ifname, want string }{
		{DefaultTUNName, "keyhole_gw_keyhole_gw0"},
		{"kh1a2b3c-gw", "keyhole_gw_kh1a2b3c_gw"},
		{"wg.0@x", "keyhole_gw_wg_0_x"},
	} {
		if got := tableName(tc.ifname); got != tc.want {
			t.Errorf("tableName(%q) = %q, want %q", tc.ifname, got, tc.want)
		}
	}
}

func TestHostCacheStale(t *testing.T) {
	k := &kernelPlane{}
	good := netip.MustParseAddr("198.51.100.20")
	future, past := time.Now().Add(time.Minute), time.Now().Add(-time.Second)
	for _, tc := range []struct {
		name    string
		c       resolvedHost
		ok      bool
		refresh bool
		want    bool
	}{
		{"never resolved", resolvedHost{}, false, false, true},
		{"fresh answer", resolvedHost{addr: good, expires: future}, true, true, false},
		{"old answer, grant path", resolvedHost{addr: good, expires: past}, true, false, false},
		{"old answer, refresh", resolvedHost{addr: good, expires: past}, true, true, true},
		{"failed recently, grant path", resolvedHost{expires: future}, true, false, false},
		{"failed recently, refresh", resolvedHost{expires: future}, true, true, true},
		{"failed long ago, grant path", resolvedHost{expires: past}, true, false, true},
	} {
		if got := k.stale(tc.c, tc.ok, tc.refresh); got != tc.want {
			t.Errorf("%s: stale = %v, want %v", tc.name, got, tc.want)
		}
	}
}
