package sqlite

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

// CreateExport implements store.Store. The key check, the cap and the
// address allocation run in the insert's own transaction on the single
// writer connection, so two exports at once cannot both pass them; the
// unique index on export keys backs the key check up. A limit of 0 or less
// means no cap.
func (s *Store) CreateExport(ctx context.Context, g store.Grant, ev api.AuditEvent, limit int) (store.Grant, error) {
	if !g.Export {
		return store.Grant{}, fmt.Errorf("create export %s: the grant is not marked Export", g.ID)
	}
	if g.ClientWGKey.IsZero() {
		return store.Grant{}, fmt.Errorf("create export %s: zero WireGuard key", g.ID)
	}
	g.CreatedAt = orNow(g.CreatedAt)
	err := s.write(ctx, func(tx *sql.Tx) error {
		var inUse int
		err := tx.QueryRowContext(ctx, `SELECT
			(SELECT count(*) FROM devices WHERE wg_key = ?1) +
			(SELECT count(*) FROM grants WHERE client_wg_key = ?1 AND export = 1)`, dbKey(g.ClientWGKey)).Scan(&inUse)
		if err != nil {
			return dbErr(err)
		}
		if inUse > 0 {
			return fmt.Errorf("WireGuard key %s: %w", g.ClientWGKey, store.ErrConflict)
		}
		if limit > 0 {
			var live int
			err := tx.QueryRowContext(ctx, `SELECT count(*) FROM grants
				WHERE user_name = ? AND not_after > ? AND export = 1 AND revoked_at IS NULL`,
				g.User, g.CreatedAt.UnixNano()).Scan(&live)
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
		req, err := newGrantReq(ctx, g, ev)
		if err != nil {
			return err
		}
		return s.insertGrantRow(ctx, tx.StmtContext(ctx, s.insertGrant), tx.StmtContext(ctx, s.insertAudit), req)
	})
	if err != nil {
		return store.Grant{}, fmt.Errorf("create export %s: %w", g.ID, err)
	}
	return g, nil
}
