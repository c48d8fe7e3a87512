-- 0001: the first Keyhole schema.
--
-- Conventions:
--   * times are INTEGER unix nanoseconds in UTC; NULL means the zero time
--     ("never", "not yet");
--   * addresses are their canonical netip text form;
--   * short lists that are only ever read whole (ports, endpoints, targets,
--     policy subjects) are JSON text; relations that are queried or must be
--     enforced (group membership, app domains) are tables with foreign keys;
--   * names are the keys other rows refer to: they are unique,
--     case-sensitive and never renamed.

CREATE TABLE groups (
	name       TEXT PRIMARY KEY,
	created_at INTEGER
) WITHOUT ROWID;

CREATE TABLE users (
	id            TEXT PRIMARY KEY,
	name          TEXT NOT NULL UNIQUE,
	password_hash TEXT NOT NULL DEFAULT '',
	disabled      INTEGER NOT NULL DEFAULT 0,
	created_at    INTEGER
);

-- Membership is a real relation: a group that still has members cannot be
-- deleted (RESTRICT), deleting a user drops its memberships (CASCADE), and
-- the index on group_name makes "members of a group" cheap.
CREATE TABLE user_groups (
	user_name  TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
	group_name TEXT NOT NULL REFERENCES groups(name) ON DELETE RESTRICT,
	PRIMARY KEY (user_name, group_name)
) WITHOUT ROWID;
CREATE INDEX user_groups_by_group ON user_groups(group_name, user_name);

CREATE TABLE gateway_groups (
	name       TEXT PRIMARY KEY,
	created_at INTEGER
) WITHOUT ROWID;

CREATE TABLE apps (
	id            TEXT PRIMARY KEY,
	name          TEXT NOT NULL UNIQUE,
	addresses     TEXT NOT NULL DEFAULT 'null', -- JSON [prefix]
	domains       TEXT NOT NULL DEFAULT 'null', -- JSON [domain], in the order given
	virtual_ips   TEXT NOT NULL DEFAULT 'null', -- JSON {domain: addr}
	ports         TEXT NOT NULL DEFAULT 'null', -- JSON ["tcp/443"]
	gateway_group TEXT NOT NULL REFERENCES gateway_groups(name) ON DELETE RESTRICT,
	created_at    INTEGER
);
CREATE INDEX apps_by_gateway_group ON apps(gateway_group);

-- A domain belongs to at most one live app: the client's resolver must map
-- each name to exactly one virtual IP.
CREATE TABLE app_domains (
	domain TEXT PRIMARY KEY,
	app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX app_domains_by_app ON app_domains(app_id);

-- A domain's virtual IP outlives the app that first claimed it, so deleting
-- and re-creating an app keeps its addresses (clients may still cache them)
-- and no other domain ever receives them.
CREATE TABLE domain_vips (
	domain TEXT PRIMARY KEY,
	ip     TEXT NOT NULL UNIQUE
) WITHOUT ROWID;

-- Every overlay address ever handed out, from any pool. Rows are never
-- deleted, which is what makes addresses never re-used, even when pools are
-- reconfigured to overlap earlier ones.
CREATE TABLE ip_allocations (
	ip     TEXT PRIMARY KEY,
	pool   TEXT NOT NULL,
	owner  TEXT NOT NULL -- "device:dev_…", "domain:wiki.corp", "gateway:gw_…"
) WITHOUT ROWID;

-- The next index (ipam.Nth) to try in each pool, keyed by the pool's text.
CREATE TABLE pool_counters (
	pool TEXT PRIMARY KEY,
	next INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE gateways (
	id         TEXT PRIMARY KEY,
	name       TEXT NOT NULL,
	group_name TEXT NOT NULL REFERENCES gateway_groups(name) ON DELETE RESTRICT,
	wg_key     TEXT NOT NULL DEFAULT '', -- base64; '' for none yet
	overlay_ip TEXT NOT NULL UNIQUE,
	endpoints  TEXT NOT NULL DEFAULT 'null', -- JSON [addr:port]
	last_seen  INTEGER,
	created_at INTEGER
);
CREATE INDEX gateways_by_group ON gateways(group_name);

CREATE TABLE enrol_tokens (
	hash       TEXT PRIMARY KEY,
	group_name TEXT NOT NULL REFERENCES gateway_groups(name) ON DELETE CASCADE,
	created_at INTEGER,
	expires_at INTEGER,
	used_at    INTEGER
) WITHOUT ROWID;
CREATE INDEX enrol_tokens_by_group ON enrol_tokens(group_name);

CREATE TABLE admin_tokens (
	id         TEXT PRIMARY KEY,
	hash       TEXT NOT NULL UNIQUE,
	scope      TEXT NOT NULL,
	created_at INTEGER,
	revoked_at INTEGER
);

-- position is 1-based and dense; the UNIQUE constraint catches any
-- renumbering bug instead of letting two rules share a place.
CREATE TABLE policy_rules (
	id          TEXT PRIMARY KEY,
	position    INTEGER NOT NULL UNIQUE,
	action      TEXT NOT NULL,
	users       TEXT NOT NULL DEFAULT 'null', -- JSON [name]
	groups      TEXT NOT NULL DEFAULT 'null', -- JSON [name]
	apps        TEXT NOT NULL DEFAULT 'null', -- JSON [name]
	description TEXT NOT NULL DEFAULT '',
	created_at  INTEGER
);

CREATE TABLE devices (
	id         TEXT PRIMARY KEY,
	user_name  TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
	name       TEXT NOT NULL,
	overlay_ip TEXT NOT NULL UNIQUE,
	wg_key     TEXT NOT NULL DEFAULT '',
	disabled   INTEGER NOT NULL DEFAULT 0,
	created_at INTEGER,
	last_seen  INTEGER
);
CREATE INDEX devices_by_user ON devices(user_name);

CREATE TABLE sessions (
	hash       TEXT PRIMARY KEY,
	device_id  TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
	user_name  TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
	created_at INTEGER,
	expires_at INTEGER
) WITHOUT ROWID;
CREATE INDEX sessions_by_device ON sessions(device_id);
CREATE INDEX sessions_by_user ON sessions(user_name);

-- Grants are the record of access given, kept after their device, app or
-- gateway is gone (the audit trail points at them), so they carry names and
-- IDs without foreign keys. The live indexes are partial: revoked grants drop
-- out of them, and not_after bounds the expired ones.
CREATE TABLE grants (
	id            TEXT PRIMARY KEY,
	device_id     TEXT NOT NULL,
	user_name     TEXT NOT NULL,
	app           TEXT NOT NULL,
	app_id        TEXT NOT NULL,
	gateway_id    TEXT NOT NULL,
	client_ip     TEXT NOT NULL,
	client_wg_key TEXT NOT NULL DEFAULT '',
	targets       TEXT NOT NULL DEFAULT 'null', -- JSON [{prefix, host}]
	ports         TEXT NOT NULL DEFAULT 'null', -- JSON ["tcp/443"]
	rule          TEXT NOT NULL DEFAULT '',
	created_at    INTEGER,
	not_after     INTEGER NOT NULL,
	revoked_at    INTEGER,
	revoke_reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX grants_live_by_device ON grants(device_id, not_after) WHERE revoked_at IS NULL;
CREATE INDEX grants_live_by_gateway ON grants(gateway_id, not_after) WHERE revoked_at IS NULL;
CREATE INDEX grants_live_by_not_after ON grants(not_after) WHERE revoked_at IS NULL;

CREATE TABLE audit_events (
	id         INTEGER PRIMARY KEY,
	time       INTEGER NOT NULL,
	type       TEXT NOT NULL,
	actor      TEXT NOT NULL DEFAULT '',
	user_name  TEXT NOT NULL DEFAULT '',
	device_id  TEXT NOT NULL DEFAULT '',
	app        TEXT NOT NULL DEFAULT '',
	gateway_id TEXT NOT NULL DEFAULT '',
	grant_id   TEXT NOT NULL DEFAULT '',
	rule       TEXT NOT NULL DEFAULT '',
	source     TEXT NOT NULL DEFAULT '',
	reason     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_by_time ON audit_events(time);
CREATE INDEX audit_by_type ON audit_events(type, time);
CREATE INDEX audit_by_user ON audit_events(user_name, time);

CREATE TABLE flow_records (
	id          INTEGER PRIMARY KEY,
	grant_id    TEXT NOT NULL,
	gateway_id  TEXT NOT NULL DEFAULT '',
	device_id   TEXT NOT NULL DEFAULT '',
	client_ip   TEXT NOT NULL DEFAULT '',
	app         TEXT NOT NULL DEFAULT '',
	proto       TEXT NOT NULL DEFAULT '',
	destination TEXT NOT NULL DEFAULT '',
	bytes_up    INTEGER NOT NULL DEFAULT 0, -- uint64 bits stored as int64
	bytes_down  INTEGER NOT NULL DEFAULT 0,
	start_time  INTEGER,
	end_time    INTEGER,
	error       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX flows_by_grant ON flow_records(grant_id, start_time);
CREATE INDEX flows_by_start ON flow_records(start_time);
