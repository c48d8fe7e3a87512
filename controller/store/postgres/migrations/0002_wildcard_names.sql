-- 0002: wildcard domain apps.
--
-- A wildcard pattern ("*.corp.internal") is an app domain like an exact
-- one: it lives in app_domains, so it belongs to at most one live app. It
-- gets no address itself; each concrete name under it gets one on demand.

-- The concrete names each wildcard app has served. A name's virtual IP is in
-- domain_vips, beside the exact domains', and outlives the app; these rows
-- go with the app and are what the per-app cap on names counts.
CREATE TABLE wildcard_names (
	app_id     text COLLATE "C" NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
	name       text COLLATE "C" NOT NULL,
	created_at timestamptz,
	PRIMARY KEY (app_id, name)
);

-- A grant for one name under a wildcard covers that name only; the name is
-- kept so renewals and re-evaluation can check it still belongs to the app.
ALTER TABLE grants ADD COLUMN name text NOT NULL DEFAULT '';
