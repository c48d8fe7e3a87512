package controller

import (
	"context"
	"strings"
	"testing"

	"github.com/keyhole-net/keyhole/internal/pgtest"
)

// TestControllerOnPostgres: the whole grant path (admin setup, login,
// posture, grant through a gateway, revocation) on PostgreSQL, chosen by
// StoreURL as keyhole controller --store does, and a restart keeps it.
func TestControllerOnPostgres(t *testing.T) {
	url := pgtest.Start(t).NewDatabase(t)
	e := newTestEnv(t, Config{StoreURL: url}, 0)
	gw := e.setupCorp()
	ctx := context.Background()
	d := e.login("alice")
	g := d.mustGrant("wiki.corp.internal")
	if _, ok := gw.Table().Lookup(g.Grant.ID); !ok {
		t.Fatal("gateway does not hold the grant")
	}
	e.restart()
	got, err := e.c.Store().Grant(ctx, g.Grant.ID)
	if err != nil || got.User != "alice" {
		t.Fatalf("grant after restart: %+v, %v", got, err)
	}
	e.must(nil, e.admin.RevokeGrant(ctx, g.Grant.ID))
	got, err = e.c.Store().Grant(ctx, g.Grant.ID)
	if err != nil || got.RevokedAt.IsZero() {
		t.Fatalf("revoked grant: %+v, %v", got, err)
	}
	if _, err := New(ctx, Config{DataDir: t.TempDir(), StoreURL: "postgres://keyhole:s3cret@127.0.0.1:1/none?connect_timeout=1"}); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("unreachable database: %v; want an error without the password", err)
	}
}
