package sqlite

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/controller/store/storetest"
	"github.com/keyhole-net/keyhole/internal/api"
)

func openTest(t testing.TB, path string) *Store {
	t.Helper()
	s, err := Open(context.Background(), Config{Path: path, Pools: storetest.Pools()})
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	return s
}

func TestConformance(t *testing.T) {
	// In memory everything shares one connection; on a file, reads use the
	// reader pool. Both must behave the same.
	t.Run("memory", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) store.Store { return openTest(t, ":memory:") })
	})
	t.Run("file", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) store.Store {
			return openTest(t, filepath.Join(t.TempDir(), "keyhole.db"))
		})
	})
}

func TestReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "keyhole.db")
	storetest.RunReopen(t, func(t *testing.T) store.Store { return openTest(t, path) })

	// The migration version is recorded, with when it was applied.
	s := openTest(t, path)
	defer s.Close()
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	var version int
	var appliedAt int64
	err = s.r.QueryRow(`SELECT version, applied_at FROM schema_migrations ORDER BY version DESC LIMIT 1`).Scan(&version, &appliedAt)
	if err != nil {
		t.Fatal(err)
	}
	if version != len(ms) || appliedAt == 0 {
		t.Fatalf("schema_migrations newest = %d at %d; want %d with a time", version, appliedAt, len(ms))
	}
	var n int
	if err := s.r.QueryRow(`SELECT count(*) FROM schema_migrations`).Scan(&n); err != nil || n != len(ms) {
		t.Fatalf("schema_migrations rows = %d, %v; want %d (each applied once)", n, err, len(ms))
	}
}

func TestFileModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	path := filepath.Join(dir, "keyhole.db")
	s := openTest(t, path)
	defer s.Close()
	// A write creates the WAL, which must be as private as the database.
	if err := s.CreateGroup(context.Background(), api.Group{Name: "eng"}); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{dir: 0o700 | os.ModeDir, path: 0o600, path + "-wal": 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s mode = %v; want %v", p, fi.Mode(), want)
		}
	}
	var mode string
	if err := s.r.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q, %v; want wal", mode, err)
	}
	// Per-connection settings, on the writer.
	for pragma, want := range map[string]int{"synchronous": 1, "foreign_keys": 1, "busy_timeout": int(busyTimeout.Milliseconds())} {
		var got int
		if err := s.w.QueryRow(`PRAGMA ` + pragma).Scan(&got); err != nil || got != want {
			t.Errorf("PRAGMA %s = %d, %v; want %d", pragma, got, err, want)
		}
	}
}

func TestRefuseNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyhole.db")
	s := openTest(t, path)
	if _, err := s.w.Exec(`INSERT INTO schema_migrations (version, applied_at) VALUES (999, 1)`); err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err := Open(context.Background(), Config{Path: path, Pools: storetest.Pools()})
	if err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("Open of a newer schema: err = %v; want a refusal", err)
	}
}

func TestOpenRejectsBadConfig(t *testing.T) {
	good := storetest.Pools()
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no path", Config{Pools: good}},
		{"zero pools", Config{Path: ":memory:"}},
		{"unmasked pool", Config{Path: ":memory:", Pools: store.Pools{Devices: netip.MustParsePrefix("100.64.0.1/11"), Apps: good.Apps, Gateways: good.Gateways}}},
		{"overlapping pools", Config{Path: ":memory:", Pools: store.Pools{Devices: netip.MustParsePrefix("100.64.0.0/10"), Apps: good.Apps, Gateways: good.Gateways}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if s, err := Open(context.Background(), tt.cfg); err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
		})
	}
}

// TestGroupInUse: membership is a real foreign key, so a group with members
// cannot be deleted out from under them.
func TestGroupInUse(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, ":memory:")
	defer s.Close()
	if err := s.CreateGroup(ctx, api.Group{Name: "eng"}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateUser(ctx, store.User{User: api.User{Name: "alice", Groups: []string{"eng"}}}); err != nil {
		t.Fatal(err)
	}
	_, err := s.w.Exec(`DELETE FROM groups WHERE name = 'eng'`)
	if !errors.Is(dbErr(err), store.ErrConflict) {
		t.Fatalf("deleting a group in use: err = %v; want ErrConflict", dbErr(err))
	}
}

// TestPoolExhaustion: a full pool fails the create cleanly and the counter
// does not move, so nothing is half-created.
func TestPoolExhaustion(t *testing.T) {
	ctx := context.Background()
	pools := storetest.Pools()
	pools.Gateways = netip.MustParsePrefix("100.112.0.0/30") // two usable
	s, err := Open(ctx, Config{Path: ":memory:", Pools: pools})
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

// TestConcurrentGrants hammers one file database from many goroutines with
// grant writes and reads at once; run under -race it also checks the pools.
// No call may fail, in particular not with SQLITE_BUSY.
func TestConcurrentGrants(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "keyhole.db"))
	defer s.Close()
	devs := seedBench(t, s, 20, 5)
	const workers, perWorker = 16, 50
	now := time.Now().UTC()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
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
					if _, err := s.RevokeGrants(ctx, []api.GrantID{g.ID}, "test", now, api.AuditEvent{Type: "grant.revoke"}); err != nil {
						errs <- err
						return
					}
					if _, err := s.Audit(ctx, store.AuditQuery{Type: "grant.", Limit: 10}); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
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

// TestGroupCommitIsolation: grants committed in one batch fail alone. Half
// the callers re-use an existing grant ID; they get ErrConflict, the others
// are stored, and only stored grants have audit events.
func TestGroupCommitIsolation(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "keyhole.db"))
	defer s.Close()
	devs := seedBench(t, s, 4, 1)
	now := time.Now().UTC()
	dup := benchGrant("grt_dup", devs[0], now)
	if err := s.CreateGrant(ctx, dup, benchEvent(dup)); err != nil {
		t.Fatal(err)
	}
	const n = 64
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := benchGrant(api.GrantID(fmt.Sprint("grt_", i)), devs[i%len(devs)], now)
			if i%2 == 1 {
				g.ID = dup.ID
			}
			errs[i] = s.CreateGrant(ctx, g, benchEvent(g))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if i%2 == 1 && !errors.Is(err, store.ErrConflict) {
			t.Errorf("duplicate grant %d: err = %v; want ErrConflict", i, err)
		}
		if i%2 == 0 && err != nil {
			t.Errorf("grant %d: %v", i, err)
		}
	}
	live, err := s.LiveGrants(ctx, now, "", "")
	if err != nil || len(live) != n/2+1 {
		t.Fatalf("live grants = %d, %v; want %d", len(live), err, n/2+1)
	}
	evs, err := s.Audit(ctx, store.AuditQuery{Type: "grant.allow", Limit: 1000})
	if err != nil || len(evs) != n/2+1 {
		t.Fatalf("grant.allow events = %d, %v; want %d", len(evs), err, n/2+1)
	}

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	g := benchGrant("grt_cancelled", devs[0], now)
	if err := s.CreateGrant(cancelled, g, benchEvent(g)); !errors.Is(err, context.Canceled) {
		t.Fatalf("CreateGrant with a cancelled context: err = %v; want context.Canceled", err)
	}
	if _, err := s.Grant(ctx, g.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("cancelled grant stored: %v", err)
	}
}

// TestQueryPlans keeps the grant path on its indexes: a schema or query
// change that turns a live-grant lookup into a table scan fails here, not
// in production with a million grants.
func TestQueryPlans(t *testing.T) {
	s := openTest(t, ":memory:")
	defer s.Close()
	plan := func(q string, args ...any) string {
		t.Helper()
		rows, err := s.r.Query("EXPLAIN QUERY PLAN "+q, args...)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var steps []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			steps = append(steps, detail)
		}
		return strings.Join(steps, "; ")
	}
	tests := []struct {
		name, query, want string
		args              []any
	}{
		{"live all", liveGrantsSQL(liveAll), "USING INDEX grants_live_by_not_after", []any{1}},
		{"live by gateway", liveGrantsSQL(liveByGateway), "USING INDEX grants_live_by_gateway", []any{1, "gw"}},
		{"live by device", liveGrantsSQL(liveByDevice), "USING INDEX grants_live_by_device", []any{1, "dev"}},
		{"live by both", liveGrantsSQL(liveByBoth), "USING INDEX grants_live_by_device", []any{1, "gw", "dev"}},
		{"grant by id", selectGrantSQL + ` WHERE id = ?`, "USING INDEX sqlite_autoindex_grants_1", []any{"grt"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := plan(tt.query, tt.args...); !strings.Contains(got, tt.want) {
				t.Fatalf("plan = %q; want %q", got, tt.want)
			}
		})
	}
}
