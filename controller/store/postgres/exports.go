package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

// CreateExport implements store.Store. The key check, the cap and the
// address allocation run in the insert's own transaction under an
// advisory lock on the user, so two exports at once, on one controller or
// two, cannot both pass the cap; the unique index on export keys backs the
// key check up. A limit of 0 or less means no cap.
func (s *Store) CreateExport(ctx context.Context, g store.Grant, ev api.AuditEvent, limit int) (store.Grant, error) {
	if !g.Export {
		return store.Grant{}, fmt.Errorf("create export %s: the grant is not marked Export", g.ID)
	}
	if g.ClientWGKey.IsZero() {
		return store.Grant{}, fmt.Errorf("create export %s: zero WireGuard key", g.ID)
	}
	g.CreatedAt = orNow(g.CreatedAt)
	err := s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, lockExportUser, g.User); err != nil {
			return err
		}
		var inUse bool
		err := tx.QueryRow(ctx, `SELECT
			EXISTS (SELECT 1 FROM devices WHERE wg_key = $1) OR
			EXISTS (SELECT 1 FROM grants WHERE client_wg_key = $1 AND export)`, dbKey(g.ClientWGKey)).Scan(&inUse)
		if err != nil {
			return dbErr(err)
		}
		if inUse {
			return fmt.Errorf("WireGuard key %s: %w", g.ClientWGKey, store.ErrConflict)
		}
		if limit > 0 {
			var live int
			err := tx.QueryRow(ctx, `SELECT count(*) FROM grants
				WHERE user_name = $1 AND not_after > $2 AND export AND revoked_at IS NULL`,
				g.User, g.CreatedAt).Scan(&live)
			if err != nil {
				return dbErr(err)
			}
			if live >= limit {
				return fmt.Errorf("user %q holds %d live exports: %w", g.User, live, store.ErrLimit)
			}
		}
		if g.ClientIP, err = allocate(ctx, tx, s.pools.Devices, "export:"+string(g.ID)); err != nil {
			return err
		}
		args, err := grantArgs(&g, &ev)
		if err != nil {
			return err
		}
		return insertGrant(ctx, tx, args)
	})
	if err != nil {
		return store.Grant{}, fmt.Errorf("create export %s: %w", g.ID, err)
	}
	return g, nil
}
