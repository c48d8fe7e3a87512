package controller

import (
	"context"
	"path/filepath"
	"strings"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/controller/store/postgres"
	"github.com/keyhole-net/keyhole/controller/store/sqlite"
)

// openStore opens the store a StoreURL names (see Config.StoreURL).
func openStore(ctx context.Context, url, dataDir string) (store.Store, error) {
	switch {
	case strings.HasPrefix(url, "postgres://"), strings.HasPrefix(url, "postgresql://"):
		return postgres.Open(ctx, postgres.Config{URL: url, Pools: DefaultPools})
	case url == "":
		url = filepath.Join(dataDir, "keyhole.db")
	}
	return sqlite.Open(ctx, sqlite.Config{Path: strings.TrimPrefix(url, "sqlite:"), Pools: DefaultPools})
}
