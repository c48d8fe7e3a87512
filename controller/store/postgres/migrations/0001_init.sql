-- 0001: the first Keyhole schema (PostgreSQL), the same tables as the
-- SQLite store's 0001_init.sql.
--
-- Conventions:
--   * times are timestamptz (microsecond precision); NULL means the zero
--     time ("never", "not yet");
--   * addresses are their canonical netip text form, as in the SQLite
--     store (a zone, which inet cannot hold, survives);
--   * short lists that are only ever read whole (ports, endpoints, targets,
--     policy subjects) are jsonb; relations that are queried or must be
--     enforced (group membership, app domains) are tables with foreign keys;
--   * names and IDs are COLLATE "C": compared and sorted byte by byte,
--     whatever the database's default collation ("Eng" before "eng");
--   * names are the keys other rows refer to: they are unique,
--     case-sensitive and never renamed.

CREATE TABLE groups (
	name       text COLLATE "C" PRIMARY KEY,
	created_at timestamptz
);

CREATE TABLE users (
	id            text COLLATE "C" PRIMARY KEY,
	name          text COLLATE "C" NOT NULL UNIQUE,
	password_hash text NOT NULL DEFAULT '',
	disabled      boolean NOT NULL DEFAULT false,
	created_at    timestamptz
);

-- Membership is a real relation: a group that still has members cannot be
-- deleted (RESTRICT), deleting a user drops its memberships (CASCADE), and
-- the index on group_name makes "members of a group" cheap.
CREATE TABLE user_groups (
	user_name  text COLLATE "C" NOT NULL REFERENCES users(name) ON DELETE CASCADE,
	group_name text COLLATE "C" NOT NULL REFERENCES groups(name) ON DELETE RESTRICT,
	PRIMARY KEY (user_name, group_name)
);
CREATE INDEX user_groups_by_group ON user_groups(group_name, user_name);

CREATE TABLE gateway_groups (
	name       text COLLATE "C" PRIMARY KEY,
	created_at timestamptz
);

CREATE TABLE apps (
	id            text COLLATE "C" PRIMARY KEY,
	name          text COLLATE "C" NOT NULL UNIQUE,
	addresses     jsonb NOT NULL DEFAULT 'null', -- [prefix]
	domains       jsonb NOT NULL DEFAULT 'null', -- [domain], in the order given
	virtual_ips   jsonb NOT NULL DEFAULT 'null', -- {domain: addr}
	ports         jsonb NOT NULL DEFAULT 'null', -- ["tcp/443"]
	gateway_group text COLLATE "C" NOT NULL REFERENCES gateway_groups(name) ON DELETE RESTRICT,
	created_at    timestamptz
);
CREATE INDEX apps_by_gateway_group ON apps(gateway_group);

-- A domain belongs to at most one live app: the client's resolver must map
-- each name to exactly one virtual IP.
CREATE TABLE app_domains (
	domain text COLLATE "C" PRIMARY KEY,
	app_id text COLLATE "C" NOT NULL REFERENCES apps(id) ON DELETE CASCADE
);
CREATE INDEX app_domains_by_app ON app_domains(app_id);

-- A domain's virtual IP outlives the app that first claimed it, so deleting
-- and re-creating an app keeps its addresses (clients may still cache them)
-- and no other domain ever receives them.
CREATE TABLE domain_vips (
	domain text COLLATE "C" PRIMARY KEY,
	ip     text COLLATE "C" NOT NULL UNIQUE
);

-- Every overlay address ever handed out, from any pool. Rows are never
-- deleted, which is what makes addresses never re-used, even when pools are
-- reconfigured to overlap earlier ones.
CREATE TABLE ip_allocations (
	ip    text COLLATE "C" PRIMARY KEY,
	pool  text COLLATE "C" NOT NULL,
	owner text NOT NULL -- "device:dev_…", "domain:wiki.corp", "gateway:gw_…"
);

-- The next index (ipam.Nth) to try in each pool, keyed by the pool's text.
-- Its row is also the pool's lock: an allocation holds it (FOR UPDATE)
-- until its transaction ends, so controllers sharing the database hand out
-- one address at a time per pool.
CREATE TABLE pool_counters (
	pool text COLLATE "C" PRIMARY KEY,
	next bigint NOT NULL
);

CREATE TABLE gateways (
	id         text COLLATE "C" PRIMARY KEY,
	name       text COLLATE "C" NOT NULL,
	group_name text COLLATE "C" NOT NULL REFERENCES gateway_groups(name) ON DELETE RESTRICT,
	wg_key     text NOT NULL DEFAULT '', -- base64; '' for none yet
	overlay_ip text COLLATE "C" NOT NULL UNIQUE,
	endpoints  jsonb NOT NULL DEFAULT 'null', -- [addr:port]
	last_seen  timestamptz,
	created_at timestamptz
);
CREATE INDEX gateways_by_group ON gateways(group_name);

CREATE TABLE enrol_tokens (
	hash       text COLLATE "C" PRIMARY KEY,
	group_name text COLLATE "C" NOT NULL REFERENCES gateway_groups(name) ON DELETE CASCADE,
	created_at timestamptz,
	expires_at timestamptz,
	used_at    timestamptz
);
CREATE INDEX enrol_tokens_by_group ON enrol_tokens(group_name);

CREATE TABLE admin_tokens (
	id         text COLLATE "C" PRIMARY KEY,
	hash       text COLLATE "C" NOT NULL UNIQUE,
	scope      text NOT NULL,
	created_at timestamptz,
	revoked_at timestamptz
);

-- position is 1-based and dense; the UNIQUE constraint catches any
-- renumbering bug instead of letting two rules share a place. It is
-- DEFERRABLE so that it is checked at the end of each statement rather than
-- per row: "position = position + 1" moves a block of rules in one UPDATE.
CREATE TABLE policy_rules (
	id          text COLLATE "C" PRIMARY KEY,
	position    integer NOT NULL,
	action      text NOT NULL,
	users       jsonb NOT NULL DEFAULT 'null', -- [name]
	groups      jsonb NOT NULL DEFAULT 'null', -- [name]
	apps        jsonb NOT NULL DEFAULT 'null', -- [name]
	description text NOT NULL DEFAULT '',
	created_at  timestamptz,
	CONSTRAINT policy_rules_position_key UNIQUE (position) DEFERRABLE INITIALLY IMMEDIATE
);

CREATE TABLE devices (
	id         text COLLATE "C" PRIMARY KEY,
	user_name  text COLLATE "C" NOT NULL REFERENCES users(name) ON DELETE CASCADE,
	name       text NOT NULL,
	overlay_ip text COLLATE "C" NOT NULL UNIQUE,
	wg_key     text COLLATE "C" NOT NULL DEFAULT '',
	disabled   boolean NOT NULL DEFAULT false,
	created_at timestamptz,
	last_seen  timestamptz
);
CREATE INDEX devices_by_user ON devices(user_name);

CREATE TABLE sessions (
	hash       text COLLATE "C" PRIMARY KEY,
	device_id  text COLLATE "C" NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
	user_name  text COLLATE "C" NOT NULL REFERENCES users(name) ON DELETE CASCADE,
	created_at timestamptz,
	expires_at timestamptz
);
CREATE INDEX sessions_by_device ON sessions(device_id);
CREATE INDEX sessions_by_user ON sessions(user_name);

-- Grants are the record of access given, kept after their device, app or
-- gateway is gone (the audit trail points at them), so they carry names and
-- IDs without foreign keys. The live indexes are partial: revoked grants drop
-- out of them, and not_after bounds the expired ones.
CREATE TABLE grants (
	id            text COLLATE "C" PRIMARY KEY,
	device_id     text COLLATE "C" NOT NULL,
	user_name     text COLLATE "C" NOT NULL,
	app           text COLLATE "C" NOT NULL,
	app_id        text COLLATE "C" NOT NULL,
	gateway_id    text COLLATE "C" NOT NULL,
	client_ip     text COLLATE "C" NOT NULL,
	client_wg_key text COLLATE "C" NOT NULL DEFAULT '',
	targets       jsonb NOT NULL DEFAULT 'null', -- [{prefix, host}]
	ports         jsonb NOT NULL DEFAULT 'null', -- ["tcp/443"]
	rule          text COLLATE "C" NOT NULL DEFAULT '',
	created_at    timestamptz,
	not_after     timestamptz NOT NULL,
	revoked_at    timestamptz,
	revoke_reason text NOT NULL DEFAULT ''
);
CREATE INDEX grants_live_by_device ON grants(device_id, not_after) WHERE revoked_at IS NULL;
CREATE INDEX grants_live_by_gateway ON grants(gateway_id, not_after) WHERE revoked_at IS NULL;
CREATE INDEX grants_live_by_not_after ON grants(not_after) WHERE revoked_at IS NULL;

-- IDs come from an identity column: increasing in insertion order within a
-- transaction, which is what orders events of the same time.
CREATE TABLE audit_events (
	id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	time       timestamptz NOT NULL,
	type       text COLLATE "C" NOT NULL,
	actor      text COLLATE "C" NOT NULL DEFAULT '',
	user_name  text COLLATE "C" NOT NULL DEFAULT '',
	device_id  text COLLATE "C" NOT NULL DEFAULT '',
	app        text COLLATE "C" NOT NULL DEFAULT '',
	gateway_id text COLLATE "C" NOT NULL DEFAULT '',
	grant_id   text COLLATE "C" NOT NULL DEFAULT '',
	rule       text COLLATE "C" NOT NULL DEFAULT '',
	source     text NOT NULL DEFAULT '',
	reason     text NOT NULL DEFAULT ''
);
CREATE INDEX audit_by_time ON audit_events(time);
CREATE INDEX audit_by_type ON audit_events(type, time);
CREATE INDEX audit_by_user ON audit_events(user_name, time);

CREATE TABLE flow_records (
	id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	grant_id    text COLLATE "C" NOT NULL,
	gateway_id  text COLLATE "C" NOT NULL DEFAULT '',
	device_id   text COLLATE "C" NOT NULL DEFAULT '',
	client_ip   text NOT NULL DEFAULT '',
	app         text COLLATE "C" NOT NULL DEFAULT '',
	proto       text NOT NULL DEFAULT '',
	destination text NOT NULL DEFAULT '',
	bytes_up    bigint NOT NULL DEFAULT 0, -- uint64 bits stored as int64
	bytes_down  bigint NOT NULL DEFAULT 0,
	start_time  timestamptz,
	end_time    timestamptz,
	error       text NOT NULL DEFAULT ''
);
CREATE INDEX flows_by_grant ON flow_records(grant_id, start_time);
CREATE INDEX flows_by_start ON flow_records(start_time);
