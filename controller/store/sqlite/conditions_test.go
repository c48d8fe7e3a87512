package sqlite

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
	"time"
)

// TestMigratePolicyConditions upgrades a database made before migration
// 0005: its devices count as approved (they enrolled when no approval was
// required), its rules have no conditions and its grants no facts.
func TestMigratePolicyConditions(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "keyhole.db")
	db, err := sql.Open("sqlite", dsn(path, false))
	if err != nil {
		t.Fatal(err)
	}
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	before := 0
	for _, m := range ms {
		if m.name == "0005_policy_conditions.sql" {
			break
		}
		if err := applyMigration(ctx, db, m, time.Now()); err != nil {
			t.Fatal(err)
		}
		before = m.version
	}
	for _, q := range []string{
		`INSERT INTO users (id, name) VALUES ('usr_alice', 'alice')`,
		`INSERT INTO devices (id, user_name, name, overlay_ip) VALUES ('dev_old', 'alice', 'laptop', '100.64.0.9')`,
		`INSERT INTO policy_rules (id, position, action, groups, apps) VALUES ('rule_old', 1, 'allow', '["eng"]', '["wiki"]')`,
		`INSERT INTO grants (id, device_id, user_name, app, app_id, gateway_id, client_ip, not_after) VALUES ('grt_old', 'dev_old', 'alice', 'wiki', 'app_wiki', 'gw_1', '100.64.0.9', 1)`,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("schema %d: %s: %v", before, q, err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s := openTest(t, path)
	defer s.Close()
	d, err := s.Device(ctx, "dev_old")
	if err != nil || !d.Approved {
		t.Errorf("device from before 0005: %+v, %v; want approved", d, err)
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
