package postgres

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/controller/store/storetest"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/key"
	"github.com/keyhole-net/keyhole/internal/pgtest"
)

func openTest(t testing.TB, url string) *Store {
	t.Helper()
	s, err := Open(context.Background(), Config{URL: url, Pools: storetest.Pools()})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

// TestStore runs everything that needs a server against one throwaway
// server; each subtest gets databases of its own (pgtest: schemas, which
// the store cannot tell from databases).
func TestStore(t *testing.T) {
	srv := pgtest.Start(t)
	tests := []struct {
		name string
		fn   func(t *testing.T, srv *pgtest.Server)
	}{
		{"Conformance", testConformance},
		{"ConformanceICU", testConformanceICU},
		{"Reopen", testReopen},
		{"RefuseNewerSchema", testRefuseNewerSchema},
		{"ConcurrentOpen", testConcurrentOpen},
		{"MigratePolicyConditions", testMigratePolicyConditions},
		{"GroupInUse", testGroupInUse},
		{"PoolExhaustion", testPoolExhaustion},
		{"CancelledGrant", testCancelledGrant},
		{"TwoControllers", testTwoControllers},
		{"ConcurrentGrants", testConcurrentGrants},
		{"ConnectError", testConnectError},
		{"RekeyGrants", testRekeyGrants},
		{"GroupCommitIsolation", testGroupCommitIsolation},
		{"QueryPlans", testQueryPlans},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, srv) })
	}
}

func testConformance(t *testing.T, srv *pgtest.Server) {
	storetest.Run(t, func(t *testing.T) store.Store { return openTest(t, srv.NewDatabase(t)) })
}

// testConformanceICU runs the suite on a database whose default collation
// sorts "eng" before "Eng" and ignores punctuation at first: the store's
// ordering and prefix queries must not depend on it.
func testConformanceICU(t *testing.T, srv *pgtest.Server) {
	const icu = `TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'`
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(ctx, `CREATE DATABASE keyhole_icu_probe `+icu)
	if err == nil {
		_, err = conn.Exec(ctx, `DROP DATABASE keyhole_icu_probe`)
	}
	conn.Close(ctx)
	if err != nil {
		t.Skipf("server cannot create an ICU database (PostgreSQL 15+ built with ICU): %v", err)
	}
	icuSrv := srv.CreateDatabase(t, icu)
	storetest.Run(t, func(t *testing.T) store.Store { return openTest(t, icuSrv.NewDatabase(t)) })
}

func testReopen(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	storetest.RunReopen(t, func(t *testing.T) store.Store { return openTest(t, url) })

	// Each migration is recorded once, with when it was applied.
	s := openTest(t, url)
	defer s.Close()
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	var n, newest int
	var oldest time.Time
	err = s.pool.QueryRow(context.Background(), `SELECT count(*), max(version), min(applied_at) FROM schema_migrations`).Scan(&n, &newest, &oldest)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(ms) || newest != len(ms) || oldest.IsZero() {
		t.Fatalf("schema_migrations: %d rows, newest %d, applied %v; want %d, each once, with a time", n, newest, oldest, len(ms))
	}
}

func testRefuseNewerSchema(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	s := openTest(t, url)
	if _, err := s.pool.Exec(context.Background(), `INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, '0999_future.sql', now())`); err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err := Open(context.Background(), Config{URL: url, Pools: storetest.Pools()})
	if err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("Open of a newer schema: err = %v; want a refusal", err)
	}
}

// testConcurrentOpen: controllers starting together on a new database
// migrate it once, one after the other, and all open.
func testConcurrentOpen(t *testing.T, srv *pgtest.Server) {
	url := srv.NewDatabase(t)
	const n = 6
	stores := make([]*Store, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			stores[i], errs[i] = Open(context.Background(), Config{URL: url, Pools: storetest.Pools()})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Open %d: %v", i, err)
			continue
		}
		defer stores[i].Close()
	}
	if t.Failed() {
		return
	}
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	var rows int
	if err := stores[0].pool.QueryRow(context.Background(), `SELECT count(*) FROM schema_migrations`).Scan(&rows); err != nil || rows != len(ms) {
		t.Fatalf("schema_migrations rows = %d, %v; want %d", rows, err, len(ms))
	}
}

// testMigratePolicyConditions upgrades a database made before migration
// 0005: its devices count as approved (they enrolled when no approval was
// required), its rules have no conditions and its grants no facts.
func testMigratePolicyConditions(t *testing.T, srv *pgtest.Server) {
	ctx := context.Background()
	url := srv.NewDatabase(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.name == "0005_policy_conditions.sql" {
			break
		}
		if _, err := conn.Exec(ctx, m.sql); err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
		if _, err := conn.Exec(ctx, `INSERT INTO schema_migrations VALUES ($1, $2, now())`, m.version, m.name); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range []string{
		`INSERT INTO users (id, name) VALUES ('usr_alice', 'alice')`,
		`INSERT INTO devices (id, user_name, name, overlay_ip) VALUES ('dev_old', 'alice', 'laptop', '100.64.0.9')`,
		`INSERT INTO policy_rules (id, position, action, groups, apps) VALUES ('rule_old', 1, 'allow', '["eng"]', '["wiki"]')`,
		`INSERT INTO grants (id, device_id, user_name, app, app_id, gateway_id, client_ip, not_after) VALUES ('grt_old', 'dev_old', 'alice', 'wiki', 'app_wiki', 'gw_1', '100.64.0.9', now())`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}

	s := openTest(t, url)
	defer s.Close()
	d, err := s.Device(ctx, "dev_old")
	if err != nil || !d.Approved || d.Posture != nil {
		t.Errorf("device from before 0005: %+v, %v; want approved, without posture", d, err)
	}
	rules, err := s.PolicyRules(ctx)
	if err != nil || len(rules) != 1 || !rules[0].RuleConditions.IsZero() {
		t.Errorf("rules from before 0005: %+v, %v; want one without conditions", rules, err)
	}
	g, err := s.Grant(ctx, "grt_old")
	if err != nil || g.Facts.Source.IsValid() || !g.Facts.MFAAt.IsZero() {
		t.Errorf("grant from before 0005: %+v, %v; want no facts", g, err)
	}
}

// testGroupInUse: membership is a real foreign key, so a group with members
// cannot be deleted out from under them.
func testGroupInUse(t *testing.T, srv *pgtest.Server) {
	ctx := context.Background()
	s := openTest(t, srv.NewDatabase(t))
	defer s.Close()
	if err := s.CreateGroup(ctx, api.Group{Name: "eng"}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateUser(ctx, store.User{User: api.User{Name: "alice", Groups: []string{"eng"}}}); err != nil {
		t.Fatal(err)
	}
	_, err := s.pool.Exec(ctx, `DELETE FROM groups WHERE name = 'eng'`)
	if !errors.Is(dbErr(err), store.ErrConflict) {
		t.Fatalf("deleting a group in use: err = %v; want ErrConflict", dbErr(err))
	}
}

// testPoolExhaustion: a full pool fails the create cleanly and the counter
// does not move, so nothing is half-created.
func testPoolExhaustion(t *testing.T, srv *pgtest.Server) {
	ctx := context.Background()
	pools := storetest.Pools()
	pools.Gateways = netip.MustParsePrefix("100.112.0.0/30") // two usable
	s, err := Open(ctx, Config{URL: srv.NewDatabase(t), Pools: pools})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.CreateGatewayGroup(ctx, api.GatewayGroup{Name: "g"}); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, err := s.CreateGateway(ctx, store.Gateway{Name: fmt.Sprint(i), Group: "g"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.CreateGateway(ctx, store.Gateway{Name: "3", Group: "g"}); err == nil || !strings.Contains(err.Error(), "exhausted") {
		t.Fatalf("third gateway in a /30: err = %v; want exhaustion", err)
	}
	gws, err := s.Gateways(ctx)
	if err != nil || len(gws) != 2 {
		t.Fatalf("Gateways = %d, %v; want 2", len(gws), err)
	}
}

func testCancelledGrant(t *testing.T, srv *pgtest.Server) {
	ctx := context.Background()
	s := openTest(t, srv.NewDatabase(t))
	defer s.Close()
	devs := seedBench(t, s, 1, 1)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	g := benchGrant("grt_cancelled", devs[0], time.Now().UTC())
	if err := s.CreateGrant(cancelled, g, benchEvent(g)); !errors.Is(err, context.Canceled) {
		t.Fatalf("CreateGrant with a cancelled context: err = %v; want context.Canceled", err)
	}
	if _, err := s.Grant(ctx, g.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("cancelled grant stored: %v", err)
	}

	// A caller that waits for a turn to commit leaves at its deadline, and
	// its grant is not stored later by someone else's batch.
	for range cap(s.grants.commit) {
		s.grants.commit <- struct{}{} // every committer busy
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	late := benchGrant("grt_late", devs[0], time.Now().UTC())
	err := s.CreateGrant(short, late, benchEvent(late))
	for range cap(s.grants.commit) {
		<-s.grants.commit
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("CreateGrant past its deadline: err = %v; want context.DeadlineExceeded", err)
	}
	next := benchGrant("grt_next", devs[0], time.Now().UTC())
	if err := s.CreateGrant(ctx, next, benchEvent(next)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Grant(ctx, late.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("grant withdrawn at its deadline stored: %v", err)
	}
}

// testTwoControllers runs the read-then-write operations from two stores
// on one database at once, as two controllers would, and checks that
// their locking holds: unique addresses, dense policy positions, caps
// that are not exceeded, one winner for one-time things.
func testTwoControllers(t *testing.T, srv *pgtest.Server) {
	ctx := context.Background()
	url := srv.NewDatabase(t)
	a, b := openTest(t, url), openTest(t, url)
	defer a.Close()
	defer b.Close()
	ctrls := []*Store{a, b}
	const workers = 8 // per controller
	// race runs fn from every worker of both controllers at once and
	// returns the errors, worker by worker.
	race := func(fn func(s *Store, i int) error) []error {
		errs := make([]error, 2*workers)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range errs {
			wg.Go(func() {
				<-start
				errs[i] = fn(ctrls[i%2], i)
			})
		}
		close(start)
		wg.Wait()
		return errs
	}
	noErrors := func(what string, errs []error) {
		t.Helper()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("%s, worker %d: %v", what, i, err)
			}
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.CreateGroup(ctx, api.Group{Name: "eng"}))
	must(a.CreateGatewayGroup(ctx, api.GatewayGroup{Name: "site"}))
	must(a.CreateUser(ctx, store.User{User: api.User{Name: "alice"}}))

	t.Run("addresses", func(t *testing.T) {
		var mu sync.Mutex
		seen := map[netip.Addr]string{}
		note := func(ip netip.Addr, owner string) error {
			mu.Lock()
			defer mu.Unlock()
			if prev, ok := seen[ip]; ok {
				return fmt.Errorf("%v given to %s and %s", ip, prev, owner)
			}
			seen[ip] = owner
			return nil
		}
		noErrors("create", race(func(s *Store, i int) error {
			for j := range 5 {
				d, err := s.CreateDevice(ctx, store.Device{User: "alice", Name: fmt.Sprint(i, j)})
				if err != nil {
					return err
				}
				if err := note(d.OverlayIP, string(d.ID)); err != nil {
					return err
				}
				g, err := s.CreateGateway(ctx, store.Gateway{Name: fmt.Sprint(i, j), Group: "site"})
				if err != nil {
					return err
				}
				if err := note(g.OverlayIP, string(g.ID)); err != nil {
					return err
				}
				app, err := s.CreateApp(ctx, store.App{Name: fmt.Sprint("app", i, "_", j), GatewayGroup: "site",
					Domains: []string{fmt.Sprintf("a%d-%d.corp.internal", i, j)}})
				if err != nil {
					return err
				}
				for d, ip := range app.VirtualIPs {
					if err := note(ip, d); err != nil {
						return err
					}
				}
			}
			return nil
		}))
	})

	t.Run("policy positions", func(t *testing.T) {
		noErrors("insert", race(func(s *Store, i int) error {
			for j := range 3 {
				if _, err := s.InsertPolicyRule(ctx, api.PolicyRule{Position: 1 + j%2, Action: api.Allow, Apps: []string{"*"}}); err != nil {
					return err
				}
			}
			return nil
		}))
		rules, err := a.PolicyRules(ctx)
		must(err)
		if len(rules) != 2*workers*3 {
			t.Fatalf("%d rules; want %d", len(rules), 2*workers*3)
		}
		noErrors("delete", race(func(s *Store, i int) error {
			if i%2 == 0 {
				return s.DeletePolicyRule(ctx, rules[i].ID)
			}
			_, err := s.InsertPolicyRule(ctx, api.PolicyRule{Position: 2, Action: api.Deny, Apps: []string{"*"}})
			return err
		}))
		rules, err = b.PolicyRules(ctx)
		must(err)
		for i, r := range rules {
			if r.Position != i+1 {
				t.Fatalf("rule %d at position %d; want dense positions", i, r.Position)
			}
		}
	})

	t.Run("wildcard names", func(t *testing.T) {
		corp, err := a.CreateApp(ctx, store.App{Name: "corp", Domains: []string{"*.corp.example"}, GatewayGroup: "site"})
		must(err)
		other, err := a.CreateApp(ctx, store.App{Name: "other", Domains: []string{"*.other.example"}, GatewayGroup: "site"})
		must(err)
		const limit = 5
		var mu sync.Mutex
		vips := map[string]netip.Addr{}
		errs := race(func(s *Store, i int) error {
			// Every worker adds the shared name to both apps (one
			// address for the name, whoever is first) and a name of
			// its own to corp (at most limit of them in all).
			for _, app := range []api.AppID{corp.ID, other.ID} {
				n, _, err := s.AddWildcardName(ctx, store.WildcardName{AppID: app, Name: "shared.example"}, 100)
				if err != nil {
					return err
				}
				mu.Lock()
				if prev, ok := vips["shared"]; ok && prev != n.VirtualIP {
					err = fmt.Errorf("shared name got %v and %v", prev, n.VirtualIP)
				}
				vips["shared"] = n.VirtualIP
				mu.Unlock()
				if err != nil {
					return err
				}
			}
			_, _, err := s.AddWildcardName(ctx, store.WildcardName{AppID: corp.ID, Name: fmt.Sprintf("n%d.corp.example", i)}, limit)
			return err
		})
		var limited int
		for i, err := range errs {
			switch {
			case errors.Is(err, store.ErrLimit):
				limited++
			case err != nil:
				t.Fatalf("worker %d: %v", i, err)
			}
		}
		names, err := a.WildcardNames(ctx)
		must(err)
		var inCorp int
		for _, n := range names {
			if n.AppID == corp.ID {
				inCorp++
			}
		}
		// corp holds the shared name and limit-1 own ones; the rest hit the cap.
		if inCorp != limit || limited != 2*workers-(limit-1) {
			t.Fatalf("corp holds %d names, %d workers limited; want %d and %d", inCorp, limited, limit, 2*workers-(limit-1))
		}
	})

	t.Run("exports", func(t *testing.T) {
		dev, err := a.CreateDevice(ctx, store.Device{User: "alice", Name: "exporter"})
		must(err)
		const limit = 3
		now := time.Now().UTC()
		errs := race(func(s *Store, i int) error {
			k, err := key.NewWGPrivate()
			if err != nil {
				return err
			}
			g := benchGrant(api.GrantID(fmt.Sprint("exp_", i)), dev, now)
			g.Export, g.ClientWGKey = true, k.Public()
			_, err = s.CreateExport(ctx, g, benchEvent(g), limit)
			return err
		})
		var ok int
		for i, err := range errs {
			switch {
			case err == nil:
				ok++
			case !errors.Is(err, store.ErrLimit):
				t.Fatalf("worker %d: %v", i, err)
			}
		}
		if ok != limit {
			t.Fatalf("%d exports created with a limit of %d", ok, limit)
		}
	})

	t.Run("one-time things", func(t *testing.T) {
		must(a.CreateEnrolToken(ctx, store.EnrolToken{Hash: "tok", Group: "site", ExpiresAt: time.Now().Add(time.Hour)}))
		must(a.CreateMFA(ctx, store.MFA{User: "alice", Secret: "v1.s"}))
		must(a.ConfirmMFA(ctx, "alice", "v1.s", 1, time.Now(), []string{"rc"}))
		var mu sync.Mutex
		var tokens, steps, codes int
		noErrors("race", race(func(s *Store, i int) error {
			_, err := s.ConsumeEnrolToken(ctx, "tok", time.Now())
			if err != nil && !errors.Is(err, store.ErrTokenUsed) {
				return err
			}
			step, err2 := s.UseMFAStep(ctx, "alice", 2)
			_, err3 := s.UseRecoveryCode(ctx, "alice", "rc", time.Now())
			if err3 != nil && !errors.Is(err3, store.ErrNotFound) {
				return err3
			}
			u, err4 := s.ProvisionOIDCUser(ctx, store.OIDCLogin{Issuer: "https://idp", Subject: "sub", User: "oidc-user", Groups: []string{"eng"}})
			if err4 == nil && u.Name != "oidc-user" {
				err4 = fmt.Errorf("provisioned %q", u.Name)
			}
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				tokens++
			}
			if step {
				steps++
			}
			if err3 == nil {
				codes++
			}
			return errors.Join(err2, err4)
		}))
		if tokens != 1 || steps != 1 || codes != 1 {
			t.Fatalf("winners: %d token consumptions, %d uses of one MFA step, %d of one recovery code; want one each", tokens, steps, codes)
		}
	})
}

// testConcurrentGrants hammers one database from many goroutines with
// grant writes and reads at once; run under -race it also checks the pool.
func testConcurrentGrants(t *testing.T, srv *pgtest.Server) {
	ctx := context.Background()
	s := openTest(t, srv.NewDatabase(t))
	defer s.Close()
	devs := seedBench(t, s, 20, 5)
	const workers, perWorker = 16, 50
	now := time.Now().UTC()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				dev := devs[(w*perWorker+i)%len(devs)]
				g := benchGrant(api.GrantID(fmt.Sprintf("grt_%d_%d", w, i)), dev, now)
				if err := s.CreateGrant(ctx, g, benchEvent(g)); err != nil {
					errs <- err
					return
				}
				if _, err := s.Grant(ctx, g.ID); err != nil {
					errs <- err
					return
				}
				if _, err := s.LiveGrants(ctx, now, g.GatewayID, dev.ID); err != nil {
					errs <- err
					return
				}
				if i%10 == 0 {
					// Revoke this grant together with another worker's,
					// in either order: the ID-ordered locks must not
					// deadlock.
					other := api.GrantID(fmt.Sprintf("grt_%d_%d", (w+1)%workers, i))
					ids := []api.GrantID{g.ID, other}
					if w%2 == 1 {
						slices.Reverse(ids)
					}
					if _, err := s.RevokeGrants(ctx, ids, "test", now, api.AuditEvent{Type: "grant.revoke"}); err != nil {
						errs <- err
						return
					}
					if _, err := s.Audit(ctx, store.AuditQuery{Type: "grant.", Limit: 10}); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	live, err := s.LiveGrants(ctx, now, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if want := workers * (perWorker - perWorker/10); len(live) != want {
		t.Fatalf("live grants = %d; want %d", len(live), want)
	}
}

// testGroupCommitIsolation: grants committed in one batch fail alone. A
// third of the callers re-use an existing grant ID and get ErrConflict; a
// third send a grant PostgreSQL refuses (a NUL byte in its name), which
// fails their batch as a whole and makes it retry grant by grant; the
// others are stored, and only stored grants have audit events.
func testGroupCommitIsolation(t *testing.T, srv *pgtest.Server) {
	ctx := context.Background()
	s := openTest(t, srv.NewDatabase(t))
	defer s.Close()
	devs := seedBench(t, s, 4, 1)
	now := time.Now().UTC()
	dup := benchGrant("grt_dup", devs[0], now)
	if err := s.CreateGrant(ctx, dup, benchEvent(dup)); err != nil {
		t.Fatal(err)
	}
	const n = 96
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			g := benchGrant(api.GrantID(fmt.Sprint("grt_", i)), devs[i%len(devs)], now)
			switch i % 3 {
			case 1:
				g.ID = dup.ID
			case 2:
				g.Name = "bad\x00name"
			}
			errs[i] = s.CreateGrant(ctx, g, benchEvent(g))
		})
	}
	wg.Wait()
	stored := 1
	for i, err := range errs {
		switch i % 3 {
		case 0:
			if err != nil {
				t.Errorf("grant %d: %v", i, err)
			}
			stored++
		case 1:
			if !errors.Is(err, store.ErrConflict) {
				t.Errorf("duplicate grant %d: err = %v; want ErrConflict", i, err)
			}
		case 2:
			if err == nil || errors.Is(err, store.ErrConflict) {
				t.Errorf("grant %d with a NUL byte: err = %v; want PostgreSQL's refusal", i, err)
			}
		}
	}
	live, err := s.LiveGrants(ctx, now, "", "")
	if err != nil || len(live) != stored {
		t.Fatalf("live grants = %d, %v; want %d", len(live), err, stored)
	}
	evs, err := s.Audit(ctx, store.AuditQuery{Type: "grant.allow", Limit: 1000})
	if err != nil || len(evs) != stored {
		t.Fatalf("grant.allow events = %d, %v; want %d", len(evs), err, stored)
	}
}

// testRekeyGrants: a device's new key goes to its live grants, oldest
// first, and to nothing else (not its exports, nor revoked or expired
// grants, nor other devices' grants).
func testRekeyGrants(t *testing.T, srv *pgtest.Server) {
	ctx := context.Background()
	s := openTest(t, srv.NewDatabase(t))
	defer s.Close()
	devs := seedBench(t, s, 2, 1)
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	mk := func(id string, dev store.Device, created, notAfter time.Duration) store.Grant {
		g := benchGrant(api.GrantID(id), dev, now.Add(created))
		g.NotAfter = now.Add(notAfter)
		return g
	}
	grants := []store.Grant{
		mk("g_b", devs[0], -time.Minute, time.Hour),        // live, second oldest
		mk("g_a", devs[0], -2*time.Minute, time.Hour),      // live, oldest
		mk("g_expired", devs[0], -time.Hour, -time.Second), // expired
		mk("g_revoked", devs[0], -time.Minute, time.Hour),  // revoked below
		mk("g_other", devs[1], -time.Minute, time.Hour),    // another device's
	}
	for _, g := range grants {
		if err := s.CreateGrant(ctx, g, benchEvent(g)); err != nil {
			t.Fatal(err)
		}
	}
	k, err := key.NewWGPrivate()
	if err != nil {
		t.Fatal(err)
	}
	exp := mk("g_export", devs[0], -time.Minute, time.Hour)
	exp.Export, exp.ClientWGKey = true, k.Public()
	if _, err := s.CreateExport(ctx, exp, benchEvent(exp), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevokeGrants(ctx, []api.GrantID{"g_revoked"}, "test", now, api.AuditEvent{Type: "grant.revoke"}); err != nil {
		t.Fatal(err)
	}

	k2, err := key.NewWGPrivate()
	if err != nil {
		t.Fatal(err)
	}
	rekeyed, err := s.RekeyGrants(ctx, devs[0].ID, k2.Public(), now)
	if err != nil {
		t.Fatal(err)
	}
	var ids []api.GrantID
	for _, g := range rekeyed {
		ids = append(ids, g.ID)
		if g.ClientWGKey != k2.Public() {
			t.Errorf("returned grant %s has key %v; want the new one", g.ID, g.ClientWGKey)
		}
	}
	if !slices.Equal(ids, []api.GrantID{"g_a", "g_b"}) {
		t.Fatalf("RekeyGrants returned %v; want [g_a g_b]", ids)
	}
	for id, want := range map[api.GrantID]key.WGPublic{
		"g_a": k2.Public(), "g_b": k2.Public(), "g_expired": devs[0].WGPublicKey, "g_revoked": devs[0].WGPublicKey,
		"g_other": devs[1].WGPublicKey, "g_export": k.Public(),
	} {
		g, err := s.Grant(ctx, id)
		if err != nil || g.ClientWGKey != want {
			t.Errorf("grant %s after rekey: key %v, %v; want %v", id, g.ClientWGKey, err, want)
		}
	}
	if got, err := s.RekeyGrants(ctx, "dev_none", k2.Public(), now); err != nil || got != nil {
		t.Errorf("RekeyGrants of an unknown device = %v, %v; want nil", got, err)
	}
}

// testConnectError: a server that is not there fails Open with the URL
// in the error, without its password.
func testConnectError(t *testing.T, _ *pgtest.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	url := "postgres://keyhole:s3cret-pw@/keyhole?host=" + t.TempDir() + "&connect_timeout=5"
	_, err := Open(ctx, Config{URL: url, Pools: storetest.Pools()})
	if err == nil {
		t.Fatal("Open of a missing server succeeded")
	}
	msg := err.Error()
	if strings.Contains(msg, "s3cret") || !strings.Contains(msg, "open store postgres://keyhole@/keyhole") {
		t.Fatalf("error %q: want the URL without its password", msg)
	}
}

// testQueryPlans keeps the grant path on its indexes: a schema or query
// change that leaves a live-grant lookup without a usable index fails here,
// not in production with a million grants. The table holds grants of many
// devices, gateways and apps, analyzed; it is still small, so sequential
// scans are switched off to ask which index the planner would use.
func testQueryPlans(t *testing.T, srv *pgtest.Server) {
	ctx := context.Background()
	s := openTest(t, srv.NewDatabase(t))
	defer s.Close()
	if _, err := s.pool.Exec(ctx, `
		INSERT INTO grants (id, device_id, user_name, app, app_id, gateway_id, client_ip, created_at, not_after)
		SELECT 'grt_' || i, 'dev_' || (i % 400), 'user', 'app', 'app_' || (i % 50), 'gw_' || (i % 20), '100.64.0.1',
			now(), now() + interval '1 hour'
		FROM generate_series(1, 4000) i`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, `ANALYZE grants`); err != nil {
		t.Fatal(err)
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SET enable_seqscan = off`); err != nil {
		t.Fatal(err)
	}
	defer conn.Exec(ctx, `RESET enable_seqscan`)
	now := time.Now()
	tests := []struct {
		name, query, want string
		args              []any
	}{
		{"live all", liveAllSQL, "grants_live_by_not_after", []any{now}},
		{"live by gateway", liveByGatewaySQL, "grants_live_by_gateway", []any{now, "gw_3"}},
		{"live by device", liveByDeviceSQL, "grants_live_by_device", []any{now, "dev_7"}},
		{"live by both", liveByBothSQL, "grants_live_by_device", []any{now, "dev_7", "gw_7"}},
		{"live for", liveForSQL, "grants_live_by_device", []any{now, "dev_7", "app_7"}},
		{"grant by id", selectGrantSQL + ` WHERE id = $1`, "grants_pkey", []any{"grt_7"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rows, err := conn.Query(ctx, "EXPLAIN "+tt.query, tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			if plan := strings.Join(lines, "\n"); !strings.Contains(plan, tt.want) {
				t.Fatalf("plan:\n%s\nwant an index scan on %s (%d lines)", plan, tt.want, len(lines))
			}
		})
	}
}

// TestMigrationsMatchSQLite: schema version N means the same change in
// both stores, so the migration files carry the same numbers and names.
func TestMigrationsMatchSQLite(t *testing.T) {
	entries, err := os.ReadDir("../sqlite/migrations")
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".sql") {
			want = append(want, e.Name())
		}
	}
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ms {
		got = append(got, m.name)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("postgres migrations %v; sqlite has %v: add the PostgreSQL version of each", got, want)
	}
}

func TestOpenRejectsBadConfig(t *testing.T) {
	good := storetest.Pools()
	const url = "postgres://keyhole:pw@localhost/keyhole"
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no url", Config{Pools: good}, "empty URL"},
		{"zero pools", Config{URL: url}, "pool"},
		{"unmasked pool", Config{URL: url, Pools: store.Pools{Devices: netip.MustParsePrefix("100.64.0.1/11"), Apps: good.Apps, Gateways: good.Gateways}}, "host bits"},
		{"overlapping pools", Config{URL: url, Pools: store.Pools{Devices: netip.MustParsePrefix("100.64.0.0/10"), Apps: good.Apps, Gateways: good.Gateways}}, "overlaps"},
		{"negative MaxConns", Config{URL: url, Pools: good, MaxConns: -1}, "MaxConns"},
		{"bad URL", Config{URL: "postgres://keyhole:pw@localhost:notaport/keyhole", Pools: good}, "open store"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Open(context.Background(), tt.cfg)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), ":pw@") {
				t.Fatalf("err = %v; want %q, and no password", err, tt.want)
			}
		})
	}
}

func TestRedactURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"postgres://keyhole:secret@db.example:5432/keyhole?sslmode=require", "postgres://keyhole@db.example:5432/keyhole?sslmode=require"},
		{"postgresql://keyhole@db/keyhole", "postgresql://keyhole@db/keyhole"},
		{"postgres://db/keyhole?user=k&password=secret", "postgres://db/keyhole?user=k"},
		{"host=db user=keyhole password=secret dbname=keyhole", "host=db user=keyhole password=[redacted] dbname=keyhole"},
		{`host=db password='it\'s secret' dbname=k`, "host=db password=[redacted] dbname=k"},
		{"host=db PASSWORD = secret", "host=db PASSWORD = [redacted]"},
		{"postgres://keyhole:secret@db:notaport/keyhole", "postgres://keyhole@db:notaport/keyhole"},
	}
	for _, tt := range tests {
		if got := RedactURL(tt.in); got != tt.want {
			t.Errorf("RedactURL(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}
