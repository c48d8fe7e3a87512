package pgtest

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestCompareVersions(t *testing.T) {
	tests := []struct {
		a, b string
		want int // sign
	}{
		{"15", "15", 0},
		{"9.6", "10", -1},
		{"16", "15", 1},
		{"10", "9.6", 1},
		{"13.1", "13", 1},
	}
	for _, tt := range tests {
		t.Run(tt.a+"_vs_"+tt.b, func(t *testing.T) {
			got := compareVersions(tt.a, tt.b)
			if (got > 0) != (tt.want > 0) || (got < 0) != (tt.want < 0) {
				t.Fatalf("compareVersions(%q, %q) = %d; want sign %d", tt.a, tt.b, got, tt.want)
			}
		})
	}
}

// TestFindBinaries: PATH first, then the newest version directory that
// has both programs.
func TestFindBinaries(t *testing.T) {
	root := t.TempDir()
	exe := func(dir, name string) {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range []string{"9.6", "15"} {
		exe(filepath.Join(root, v, "bin"), "initdb")
		exe(filepath.Join(root, v, "bin"), "postgres")
	}
	exe(filepath.Join(root, "16", "bin"), "initdb") // no server: not a candidate
	glob := filepath.Join(root, "*", "bin")

	t.Setenv("PATH", "")
	got, err := findBinariesIn(glob)
	if want := filepath.Join(root, "15", "bin", "postgres"); err != nil || got.postgres != want {
		t.Fatalf("versioned: %+v, %v; want %s", got, err, want)
	}
	onPath := filepath.Join(root, "path")
	exe(onPath, "initdb")
	exe(onPath, "postgres")
	t.Setenv("PATH", onPath)
	if got, err := findBinariesIn(glob); err != nil || got.initdb != filepath.Join(onPath, "initdb") {
		t.Fatalf("on PATH: %+v, %v; want %s", got, err, onPath)
	}
	t.Setenv("PATH", "")
	if _, err := findBinariesIn(filepath.Join(root, "none", "*")); err == nil {
		t.Fatal("found binaries where there are none")
	}
}

// TestServer: each NewDatabase is an empty database of its own, and the
// server listens on no TCP port.
func TestServer(t *testing.T) {
	srv := Start(t)
	ctx := context.Background()
	var names []string
	for range 2 {
		conn, err := pgx.Connect(ctx, srv.NewDatabase(t))
		if err != nil {
			t.Fatal(err)
		}
		var name string
		var tables int
		err = conn.QueryRow(ctx, `SELECT current_schema(), (SELECT count(*) FROM pg_tables WHERE schemaname = current_schema())`).Scan(&name, &tables)
		if err == nil {
			// Something the next database must not see.
			_, err = conn.Exec(ctx, `CREATE TABLE t (x int)`)
		}
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if tables != 0 {
			t.Errorf("database %s holds %d tables; want an empty one", name, tables)
		}
		names = append(names, name)
	}
	if names[0] == names[1] {
		t.Fatalf("two NewDatabase calls gave the same database %s", names[0])
	}

	// A database goes when its test ends.
	var gone string
	t.Run("cleanup", func(t *testing.T) {
		cfg, err := pgx.ParseConfig(srv.NewDatabase(t))
		if err != nil {
			t.Fatal(err)
		}
		gone = cfg.RuntimeParams["search_path"]
	})
	conn, err := pgx.Connect(ctx, srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var left int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname = $1`, gone).Scan(&left); err != nil || left != 0 || gone == "" {
		t.Errorf("schema %q after its test: %d left, %v; want it dropped", gone, left, err)
	}

	// CreateDatabase gives a real database, with databases of its own.
	db := srv.CreateDatabase(t, "TEMPLATE template0")
	inner, err := pgx.Connect(ctx, db.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close(ctx)
	var outer, cur string
	if err := conn.QueryRow(ctx, `SELECT current_database()`).Scan(&outer); err != nil {
		t.Fatal(err)
	}
	if err := inner.QueryRow(ctx, `SELECT current_database()`).Scan(&cur); err != nil || cur == outer {
		t.Errorf("CreateDatabase: connected to %q, %v; want a database other than %q", cur, err, outer)
	}

	if os.Getenv(EnvURL) == "" {
		var listen string
		if err := conn.QueryRow(ctx, `SHOW listen_addresses`).Scan(&listen); err != nil || listen != "" {
			t.Errorf("listen_addresses = %q, %v; want none (unix socket only)", listen, err)
		}
	}
}

func TestWithParam(t *testing.T) {
	tests := []struct{ u, key, value, want string }{
		{"postgres://postgres@/postgres?host=%2Ftmp%2Fx", "search_path", "s1", "postgres://postgres@/postgres?host=%2Ftmp%2Fx&search_path=s1"},
		{"postgres://u:p@db:5432/keyhole?sslmode=disable", "dbname", "d1", "postgres://u:p@db:5432/d1?sslmode=disable"},
		{"host=db user=u dbname=keyhole", "dbname", "d1", "host=db user=u dbname=keyhole dbname=d1"},
	}
	for _, tt := range tests {
		got, err := withParam(tt.u, tt.key, tt.value)
		if err != nil || got != tt.want {
			t.Errorf("withParam(%q, %s, %s) = %q, %v; want %q", tt.u, tt.key, tt.value, got, err, tt.want)
		}
	}
	if _, err := withParam("mysql://x", "dbname", "d"); err == nil {
		t.Error("withParam accepted a mysql:// URL")
	}
}
