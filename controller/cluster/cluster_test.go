package cluster

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/keyhole-net/keyhole/internal/trust"
)

func TestBroadcastReachesEveryOtherNodeOnce(t *testing.T) {
	ca := newTestCA(t)
	nodes := startCluster(t, ca, "ctl-a", "ctl-b", "ctl-c")
	a, b, c := nodes[0], nodes[1], nodes[2]

	ev, err := a.Broadcast("grant.push", json.RawMessage(`{"gateway_id":"gw_1","grant_id":"gr_1"}`))
	if err != nil {
		t.Fatal(err)
	}
	if ev.Origin != "ctl-a" || ev.Seq != 1 || ev.Kind != "grant.push" {
		t.Fatalf("Broadcast returned %+v", ev)
	}
	for _, n := range []*node{b, c} {
		eventually(t, 5*time.Second, func() (bool, string) {
			return n.rec.count(ev) == 1, fmt.Sprintf("%s has %v", n.cfg.NodeName, n.rec.got())
		})
	}
	quiesce(t, nodes...)
	for _, n := range []*node{b, c} {
		got := n.rec.got()
		if len(got) != 1 {
			t.Fatalf("%s got %d events, want 1: %v", n.cfg.NodeName, len(got), got)
		}
		if g := got[0]; g.Origin != ev.Origin || g.Epoch != ev.Epoch || g.Seq != ev.Seq || g.Kind != ev.Kind ||
			string(g.Body) != string(ev.Body) || !g.Expires.Equal(ev.Expires) {
			t.Errorf("%s got %+v, want %+v", n.cfg.NodeName, g, ev)
		}
	}
	if got := a.rec.got(); len(got) != 0 {
		t.Errorf("origin got its own event back: %v", got)
	}
}

// A burst from two origins at once: memberlist's transmit queue sends the
// newest (and largest) first and a node may miss a transmission, yet every
// node gets every other node's events, once. (Order within the reorder
// window is TestTracker's subject: with a burst on a loaded machine the
// window can pass.)
func TestBurstArrivesOnce(t *testing.T) {
	ca := newTestCA(t)
	nodes := startCluster(t, ca, "ctl-a", "ctl-b", "ctl-c")
	const n = 40
	for i := range n {
		if _, err := nodes[0].Broadcast("grant.push", json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))); err != nil {
			t.Fatal(err)
		}
		if _, err := nodes[2].Broadcast("note", json.RawMessage(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	for _, nd := range nodes {
		want := 2 * n
		if nd != nodes[1] {
			want = n
		}
		eventually(t, 20*time.Second, func() (bool, string) {
			got := len(nd.rec.got())
			return got >= want, fmt.Sprintf("%s has %d of %d events", nd.cfg.NodeName, got, want)
		})
	}
	quiesce(t, nodes...)
	for _, nd := range nodes {
		seen := map[eventKey]int{}
		count := map[string]int{}
		for _, ev := range nd.rec.got() {
			seen[ev.key()]++
			if seen[ev.key()] > 1 {
				t.Errorf("%s: event %s/%d delivered twice", nd.cfg.NodeName, ev.Origin, ev.Seq)
			}
			count[ev.Origin]++
		}
		for _, origin := range []string{"ctl-a", "ctl-c"} {
			want := n
			if origin == nd.cfg.NodeName {
				want = 0
			}
			if count[origin] != want {
				t.Errorf("%s got %d events from %s, want %d", nd.cfg.NodeName, count[origin], origin, want)
			}
		}
	}
}

func TestDuplicatesAreDeliveredOnce(t *testing.T) {
	ca := newTestCA(t)
	nodes := startCluster(t, ca, "ctl-a", "ctl-b", "ctl-c")
	a, b := nodes[0], nodes[1]

	evs, err := a.Revoked([]string{"gr_1", "gr_2"}, time.Now().Add(time.Minute))
	if err != nil || len(evs) != 1 {
		t.Fatalf("Revoked: %v, %v", evs, err)
	}
	state := (&delegate{c: a.Cluster}).LocalState(false)
	msgs, err := decodeState(state)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("state: %d events, %v", len(msgs), err)
	}
	// The same event, again and again, by gossip and by state exchange.
	d := &delegate{c: b.Cluster}
	for range 5 {
		d.NotifyMsg(msgs[0])
		d.MergeRemoteState(state, false)
	}
	quiesce(t, nodes...)
	for _, n := range nodes[1:] {
		if got := n.rec.count(evs[0]); got != 1 {
			t.Errorf("%s delivered the revocation %d times, want 1", n.cfg.NodeName, got)
		}
		ids, err := n.rec.got()[0].RevokedIDs()
		if err != nil || !slices.Equal(ids, []string{"gr_1", "gr_2"}) {
			t.Errorf("%s: RevokedIDs = %v, %v", n.cfg.NodeName, ids, err)
		}
	}
}

func TestRevokedSplitsLargeSets(t *testing.T) {
	ca := newTestCA(t)
	nodes := startCluster(t, ca, "ctl-a", "ctl-b")
	var ids []string
	for i := range 200 {
		ids = append(ids, fmt.Sprintf("gr_%032d", i))
	}
	evs, err := nodes[0].Revoked(ids, time.Now().Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) < 2 {
		t.Fatalf("%d events for 200 IDs, want several", len(evs))
	}
	var sent []string
	for _, ev := range evs {
		if len(ev.Body) > MaxBodyBytes {
			t.Errorf("event body %d bytes", len(ev.Body))
		}
		got, err := ev.RevokedIDs()
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, got...)
	}
	if !slices.Equal(sent, ids) {
		t.Fatalf("IDs across events differ from those revoked")
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		var got []string
		for _, ev := range nodes[1].rec.got() {
			ids, _ := ev.RevokedIDs()
			got = append(got, ids...)
		}
		slices.Sort(got) // the events may come in any order
		return slices.Equal(got, ids), fmt.Sprintf("ctl-b has %d of %d IDs", len(got), len(ids))
	})
}

func TestPartitionHealsThroughStateExchange(t *testing.T) {
	ca := newTestCA(t)
	nodes := startCluster(t, ca, "ctl-a", "ctl-b", "ctl-c")
	a, b, c := nodes[0], nodes[1], nodes[2]

	// Cut ctl-c off from both others, and wait until they notice.
	c.tr.partition(map[string]string{"ctl-a": a.Addr().String(), "ctl-b": b.Addr().String()})
	waitMembers(t, []*node{a, b}, "ctl-a", "ctl-b")

	evs, err := a.Revoked([]string{"gr_1"}, time.Now().Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	push, err := a.Broadcast("grant.push", json.RawMessage(`{"grant_id":"gr_2"}`))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() (bool, string) {
		return b.rec.count(evs[0]) == 1 && b.rec.count(push) == 1, fmt.Sprintf("ctl-b has %v", b.rec.got())
	})
	// Gossip is over: whatever ctl-c learns now comes from state.
	quiesce(t, a, b)
	if got := c.rec.got(); len(got) != 0 {
		t.Fatalf("partitioned node got %v", got)
	}

	c.tr.partition(nil)
	eventually(t, 10*time.Second, func() (bool, string) {
		return c.rec.count(evs[0]) == 1, fmt.Sprintf("ctl-c has %v", c.rec.got())
	})
	waitMembers(t, nodes, "ctl-a", "ctl-b", "ctl-c")
	quiesce(t, nodes...)
	if n := c.stats.viaState.Load(); n < 1 {
		t.Errorf("ctl-c learned the revocation by gossip, not state exchange (via state: %d)", n)
	}
	for _, n := range []*node{b, c} {
		if got := n.rec.count(evs[0]); got != 1 {
			t.Errorf("%s delivered the revocation %d times, want 1", n.cfg.NodeName, got)
		}
	}
	// A grant push is not state: the partitioned node does not get it late.
	if got := c.rec.count(push); got != 0 {
		t.Errorf("ctl-c got the grant push %d times after the partition", got)
	}
}

func TestOutsidersCannotJoinReadOrInject(t *testing.T) {
	ca := newTestCA(t)
	otherCA := newTestCA(t)
	cases := []struct {
		name string
		opts func(t *testing.T) []nodeOpt
		// sameKey: the outsider holds the gossip key, so its packets
		// are decrypted and must fail later (identity, signature).
		sameKey bool
		// validCert: the outsider holds some controller's certificate
		// (not its own name's), so the TLS handshake of its own join
		// passes; the members still never admit it under its name.
		validCert bool
	}{
		{
			name: "wrong secret key",
			opts: func(*testing.T) []nodeOpt {
				return []nodeOpt{withKey(SecretKey("fedcba9876543210fedcba9876543210"))}
			},
		},
		{
			name: "certificate from another CA",
			opts: func(t *testing.T) []nodeOpt {
				return []nodeOpt{withCert(otherCA.issue(t, trust.KindController, "ctl-x")), withCAs(otherCA.pool)}
			},
			sameKey: true,
		},
		{
			name: "gateway certificate",
			opts: func(t *testing.T) []nodeOpt {
				return []nodeOpt{withCert(ca.issue(t, trust.KindGateway, "ctl-x")), outsider()}
			},
			sameKey: true,
		},
		{
			name: "certificate for another controller",
			opts: func(t *testing.T) []nodeOpt {
				return []nodeOpt{withCert(ca.issue(t, trust.KindController, "ctl-y")), outsider()}
			},
			sameKey:   true,
			validCert: true,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			nodes := startCluster(t, ca, "ctl-a", "ctl-b")
			a, b := nodes[0], nodes[1]
			x := startNode(t, ca, "ctl-x", tc.opts(t)...)

			// Cannot join, either way round.
			if n, err := x.Join([]string{a.Addr().String()}); err == nil && !tc.validCert {
				t.Fatalf("outsider joined %d nodes", n)
			}
			if n, err := a.Join([]string{"ctl-x/" + x.Addr().String()}); err == nil {
				t.Fatalf("member joined the outsider (%d)", n)
			}

			// Cannot inject: its own event, and one forged in ctl-a's name.
			own := mustEncode(t, x.Cluster, Event{Origin: "ctl-x", Epoch: 1, Seq: 1, Kind: "revoke", Body: json.RawMessage(`{"ids":["gr_1"]}`), Expires: time.Now().Add(time.Minute)})
			forged := mustEncode(t, x.Cluster, Event{Origin: "ctl-a", Epoch: 1, Seq: 1, Kind: "revoke", Body: json.RawMessage(`{"ids":["gr_1"]}`), Expires: time.Now().Add(time.Minute)})
			to := memberlist.Address{Addr: b.Addr().String(), Name: "ctl-b"}
			for _, m := range [][]byte{own, forged} {
				if err := x.ml.SendToAddress(to, m); err != nil {
					t.Fatal(err)
				}
			}
			if tc.sameKey {
				// Decrypted, then refused: the forgery for its bad
				// signature, the other for its unknown origin.
				eventually(t, 5*time.Second, func() (bool, string) {
					return b.logs.contains("bad signature"), "ctl-b has not refused the forged event yet"
				})
			} else {
				eventually(t, 5*time.Second, func() (bool, string) {
					return b.logs.contains("ecrypt"), "ctl-b has not refused the packet yet"
				})
			}

			// Cannot read: the members' traffic never goes to it. Without
			// the key, not even a packet sent straight to it is readable.
			// (With the key, such a packet would be: the key is what
			// keeps UDP gossip confidential.)
			ev, err := a.Broadcast("grant.push", json.RawMessage(`{}`))
			if err != nil {
				t.Fatal(err)
			}
			if !tc.sameKey {
				raw := mustEncode(t, a.Cluster, ev)
				if err := a.ml.SendToAddress(memberlist.Address{Addr: x.Addr().String()}, raw); err != nil {
					t.Fatal(err)
				}
				eventually(t, 5*time.Second, func() (bool, string) {
					return x.logs.contains("ecrypt"), "the outsider has not refused the packet yet"
				})
			}
			eventually(t, 5*time.Second, func() (bool, string) {
				return b.rec.count(ev) == 1, "ctl-b did not get the broadcast"
			})
			quiesce(t, a, b)
			if got := b.rec.got(); len(got) != 1 {
				t.Errorf("ctl-b delivered %v, want only ctl-a's event", got)
			}
			if got := x.rec.got(); len(got) != 0 && !tc.validCert {
				// (An outsider holding a real controller's key and the
				// gossip key is that controller: it may read.)
				t.Errorf("outsider delivered %v", got)
			}
			waitMembers(t, nodes, "ctl-a", "ctl-b")
			if got := memberNames(x.Cluster); !tc.validCert && !slices.Equal(got, []string{"ctl-x"}) {
				t.Errorf("outsider sees members %v", got)
			}
		})
	}
}

func mustEncode(t *testing.T, c *Cluster, ev Event) []byte {
	t.Helper()
	raw, err := encodeEvent(ev, c.signer)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestMalformedMessagesAreDropped(t *testing.T) {
	ca := newTestCA(t)
	nodes := startCluster(t, ca, "ctl-a", "ctl-b")
	a, b := nodes[0], nodes[1]
	good := Event{Origin: "ctl-a", Epoch: 7, Seq: 1, Kind: "grant.push", Body: json.RawMessage(`{}`), Expires: time.Now().Add(time.Minute)}
	valid := mustEncode(t, a.Cluster, good)

	badSig := slices.Clone(valid)
	badSig[len(badSig)-3] ^= 0xff
	notJSON := good
	notJSON.Seq, notJSON.Body = 2, json.RawMessage(`{"ids":[`)
	expired := good
	expired.Seq, expired.Expires = 3, time.Now().Add(-time.Second)
	seqZero := good
	seqZero.Seq = 0
	badMsgs := map[string][]byte{
		"garbage":        []byte("\x01\x01 hello"),
		"wrong type":     append([]byte{0x7f}, valid[1:]...),
		"truncated":      valid[:len(valid)-10],
		"trailing bytes": append(slices.Clone(valid), 0),
		"bad signature":  badSig,
		"body not JSON":  mustEncode(t, a.Cluster, notJSON),
		"expired":        mustEncode(t, a.Cluster, expired),
		"sequence zero":  mustEncode(t, a.Cluster, seqZero),
		"oversized":      make([]byte, maxEventBytes+1),
	}
	to := memberlist.Address{Addr: b.Addr().String(), Name: "ctl-b"}
	for name, m := range badMsgs {
		if err := a.ml.SendToAddress(to, m); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	// State exchange input is checked as strictly.
	d := &delegate{c: b.Cluster}
	d.MergeRemoteState([]byte("not a state"), false)
	d.MergeRemoteState(encodeState([][]byte{badSig, []byte("x")}), false)

	eventually(t, 5*time.Second, func() (bool, string) {
		n := b.stats.dropped.Load()
		return n >= int64(len(badMsgs)+3), fmt.Sprintf("ctl-b dropped %d messages", n)
	})
	// The worker survived: a good message still gets through, once.
	if err := a.ml.SendToAddress(to, valid); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() (bool, string) {
		return b.rec.count(good) == 1, fmt.Sprintf("ctl-b has %v", b.rec.got())
	})
	quiesce(t, nodes...)
	if got := b.rec.got(); len(got) != 1 {
		t.Errorf("ctl-b delivered %v, want only the good event", got)
	}
}

func TestMemberChanges(t *testing.T) {
	ca := newTestCA(t)
	nodes := startCluster(t, ca, "ctl-a", "ctl-b", "ctl-c")
	a, b, c := nodes[0], nodes[1], nodes[2]
	eventually(t, 5*time.Second, func() (bool, string) {
		return hasMemberEvent(a, MemberJoin, "ctl-b") && hasMemberEvent(a, MemberJoin, "ctl-c"), fmt.Sprintf("ctl-a saw %v", a.rec.memberEvents())
	})

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() (bool, string) {
		return hasMemberEvent(a, MemberLeave, "ctl-c"), fmt.Sprintf("ctl-a saw %v", a.rec.memberEvents())
	})
	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() (bool, string) {
		return hasMemberEvent(a, MemberFail, "ctl-b"), fmt.Sprintf("ctl-a saw %v", a.rec.memberEvents())
	})
	// (A slow machine may see a false failure, refuted at once; what
	// counts is the last word on each.)
	if last := lastMemberEvent(a, "ctl-c"); last != MemberLeave {
		t.Errorf("last news of ctl-c: %v, want leave: %v", last, a.rec.memberEvents())
	}
	if hasMemberEvent(a, MemberLeave, "ctl-b") {
		t.Errorf("ctl-b failed, but was reported as leaving: %v", a.rec.memberEvents())
	}
	if got := memberNames(a.Cluster); !slices.Equal(got, []string{"ctl-a"}) {
		t.Errorf("members = %v", got)
	}
	// Closed nodes refuse work instead of panicking.
	if _, err := c.Broadcast("x", json.RawMessage(`{}`)); err == nil {
		t.Error("Broadcast after Close succeeded")
	}
	if err := c.Leave(time.Second); err == nil {
		t.Error("Leave after Close succeeded")
	}
}

func lastMemberEvent(n *node, name string) MemberChange {
	last := MemberChange(-1)
	for _, ev := range n.rec.memberEvents() {
		if ev.Member.Name == name {
			last = ev.Change
		}
	}
	return last
}

func hasMemberEvent(n *node, change MemberChange, name string) bool {
	for _, ev := range n.rec.memberEvents() {
		if ev.Change == change && ev.Member.Name == name {
			return true
		}
	}
	return false
}

func TestMembersHaveAddresses(t *testing.T) {
	ca := newTestCA(t)
	nodes := startCluster(t, ca, "ctl-a", "ctl-b")
	for _, m := range nodes[0].Members() {
		var want string
		for _, n := range nodes {
			if n.cfg.NodeName == m.Name {
				want = n.Addr().String()
			}
		}
		if m.Addr.String() != want {
			t.Errorf("member %s at %s, want %s", m.Name, m.Addr, want)
		}
	}
}

func TestAliveDelegate(t *testing.T) {
	ca := newTestCA(t)
	n := startNode(t, ca, "ctl-a")
	d := &delegate{c: n.Cluster}
	for _, tc := range []struct {
		name    string
		node    string
		wantErr string
	}{
		{"self", "ctl-a", ""},
		{"not a controller ID", "bad name", "not a controller ID"},
		{"path in name", "ctl/../x", "not a controller ID"},
		{"empty", "", "not a controller ID"},
		{"too long", strings.Repeat("a", 65), "not a controller ID"},
		{"unverified", "ctl-b", "not proved"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := d.NotifyAlive(&memberlist.Node{Name: tc.node, Addr: []byte{127, 0, 0, 1}, Port: 1})
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("NotifyAlive(%q) = %v, want %q", tc.node, err, tc.wantErr)
			}
		})
	}
	n.peers.learn("ctl-b", ca.issue(t, trust.KindController, "ctl-b").Leaf, "127.0.0.1:1")
	if err := d.NotifyAlive(&memberlist.Node{Name: "ctl-b", Addr: []byte{127, 0, 0, 1}, Port: 1}); err != nil {
		t.Errorf("verified node refused: %v", err)
	}
	if err := d.NotifyAlive(&memberlist.Node{Name: "ctl-b", Addr: []byte{127, 0, 0, 1}, Port: 2}); err == nil {
		t.Error("verified node admitted at an address it did not prove")
	}
}

func TestConfigChecks(t *testing.T) {
	ca := newTestCA(t)
	otherCA := newTestCA(t)
	good := func() Config {
		return Config{
			NodeName: "ctl-a", BindAddr: "127.0.0.1", BindPort: AnyPort, SecretKey: testKey,
			Certificate: ca.issue(t, trust.KindController, "ctl-a"), CAs: ca.pool,
		}
	}
	for _, tc := range []struct {
		name    string
		edit    func(*Config)
		wantErr string
	}{
		{"bad name", func(c *Config) { c.NodeName = "a b" }, "node name"},
		{"short key", func(c *Config) { c.SecretKey = SecretKey("short") }, "secret key is 5 bytes"},
		{"no key", func(c *Config) { c.SecretKey = nil }, "secret key is 0 bytes"},
		{"no CA", func(c *Config) { c.CAs = nil }, "CA pool"},
		{"no certificate", func(c *Config) { c.Certificate.Certificate = nil }, "no certificate"},
		{"certificate for another ID", func(c *Config) { c.Certificate = ca.issue(t, trust.KindController, "ctl-b") }, `expected "ctl-a"`},
		{"gateway certificate", func(c *Config) { c.Certificate = ca.issue(t, trust.KindGateway, "ctl-a") }, "not a controller"},
		{"certificate of another CA", func(c *Config) { c.Certificate = otherCA.issue(t, trust.KindController, "ctl-a") }, "unknown authority"},
		{"no identity", func(c *Config) { c.Certificate = ca.issue(t, "", "") }, "0 keyhole identities"},
		{"bad port", func(c *Config) { c.BindPort = 70000 }, "out of range"},
		{"bad bind address", func(c *Config) { c.BindAddr = "localhost" }, "not an IP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good()
			tc.edit(&cfg)
			c, err := New(cfg)
			if err == nil {
				c.Shutdown()
				t.Fatalf("New succeeded")
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("New: %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestSecretKeyNeverPrints(t *testing.T) {
	k := SecretKey("0123456789abcdef")
	cfg := Config{SecretKey: k}
	for _, s := range []string{
		fmt.Sprint(k), fmt.Sprintf("%x %X %s %q %v %+v %#v %d", k, k, k, k, k, k, k, k),
		fmt.Sprintf("%+v %#v", cfg, cfg),
	} {
		if strings.Contains(s, "0123456789abcdef") || strings.Contains(s, "3031323334") || strings.Contains(s, "48 49 50") {
			t.Errorf("key printed: %s", s)
		}
	}
	b, err := json.Marshal(struct{ Key SecretKey }{k})
	if err != nil || strings.Contains(string(b), "MDEy") || strings.Contains(string(b), "0123") {
		t.Errorf("key in JSON: %s, %v", b, err)
	}
	h := newLogRecorder()
	logger := slog.New(h)
	logger.Info("cfg", "key", k)
	if !h.contains("[redacted]") {
		t.Errorf("log: %v", h.all())
	}
}
