package postgres

import (
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/keyhole-net/keyhole/controller/store/column"
)

// dbTime is how a time.Time is passed to a timestamptz column: NULL for
// the zero time. PostgreSQL keeps microseconds; pgx truncates the rest.
func dbTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

// goTime reads a timestamptz, in UTC; NULL is the zero time.
func goTime(t pgtype.Timestamptz) time.Time {
	if !t.Valid {
		return time.Time{}
	}
	return t.Time.UTC()
}

// The encodings both SQL stores share (package column).
var (
	orNow  = column.OrNow
	dbAddr = column.Addr
	goAddr = column.ParseAddr
	dbKey  = column.Key
	goKey  = column.ParseKey
	dbJSON = column.JSON
	newID  = column.NewID
)
