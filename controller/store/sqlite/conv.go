package sqlite

import (
	"database/sql"
	"encoding/json"
	"time"

	"github.com/keyhole-net/keyhole/controller/store/column"
)

// dbTime is how a time.Time is stored: unix nanoseconds, NULL for the zero
// time. Nanoseconds keep every time the controller produces exact.
func dbTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixNano()
}

// goTime reads a time stored by dbTime, in UTC.
func goTime(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.Unix(0, n.Int64).UTC()
}

func goJSON(s string, v any) error {
	if s == "" || s == "null" {
		return nil
	}
	return json.Unmarshal([]byte(s), v)
}

// scanner is *sql.Row or *sql.Rows.
type scanner interface {
	Scan(dest ...any) error
}

// boolInt stores a bool as 0/1.
func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
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
