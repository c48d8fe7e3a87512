package gateway

import (
	"encoding/json"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

// FuzzGrantMessage feeds arbitrary stream lines through the gateway's event
// handling into a grant table: it must never panic, and the table must stay
// consistent (every grant it holds passes checkGrant, and peers are counted
// right).
func FuzzGrantMessage(f *testing.F) {
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	good := api.StreamEvent{Seq: 2, Type: api.EventGrant, Grants: []api.GatewayGrant{{
		ID: "grt_1", DeviceID: "dev_1", App: "wiki", ClientIP: netip.MustParseAddr("100.64.0.1"),
		ClientWGKey: mustKey(f), Targets: []api.GrantTarget{{Prefix: netip.MustParsePrefix("100.96.0.1/32"), Host: "wiki.corp.internal"}},
		Ports: []api.PortRange{{Proto: "tcp", First: 443, Last: 443}}, NotAfter: now.Add(time.Minute),
	}}}
	b, _ := json.Marshal(good)
	f.Add(b)
	sync := good
	sync.Type = api.EventSync
	b, _ = json.Marshal(sync)
	f.Add(b)
	f.Add([]byte(`{"seq":3,"type":"revoke","grant_ids":["grt_1"]}`))
	f.Add([]byte(`{"seq":1,"type":"sync","grants":[{"id":"x","targets":[{"prefix":"0.0.0.0/0"}]}]}`))
	f.Add([]byte(`{"type":"grant","grants":[{"id":"g","client_ip":"100.64.0.1","client_wg_key":"AAAA","targets":[],"ports":["tcp/1"]}]}`))
	f.Add([]byte(`{"type":"unknown"}`))
	log := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, line []byte) {
		table := NewGrantTable(func() time.Time { return now })
		var ev api.StreamEvent
		if err := json.Unmarshal(line, &ev); err != nil {
			return
		}
		// Apply twice, as a resumed stream might, then revoke everything.
		for range 2 {
			_, _ = applyEvent(table, log, ev)
		}
		for _, g := range table.Grants() {
			if err := checkGrant(g); err != nil {
				t.Fatalf("table holds a grant checkGrant refuses: %v", err)
			}
			if g.Targets[0].Prefix.Bits() == 0 {
				t.Fatal("table holds a grant for everything")
			}
		}
		ids := make([]api.GrantID, 0)
		for _, g := range table.Grants() {
			ids = append(ids, g.ID)
		}
		table.Remove(ids...)
		if table.Len() != 0 || table.Peers() != 0 {
			t.Fatalf("after removing all: %d grants, %d peers", table.Len(), table.Peers())
		}
	})
}
