-- 0003: exports for stock WireGuard clients.
--
-- An export is a grant whose client is not the device that asked for it but
-- a stock WireGuard client (a phone) with its own key and overlay address:
-- the grant row's client_wg_key and client_ip are the export's. Keeping it a
-- grant row means revocation, expiry, re-evaluation and the gateway's grant
-- table treat it like any other grant.
ALTER TABLE grants ADD COLUMN export boolean NOT NULL DEFAULT false;

-- An export key is used once, ever: a second export (or a replay of a
-- revoked one) with the same key is refused, also when two controllers
-- create them at once.
CREATE UNIQUE INDEX grants_export_key ON grants(client_wg_key) WHERE export;

-- The per-user cap counts a user's live exports.
CREATE INDEX grants_live_exports_by_user ON grants(user_name, not_after) WHERE export AND revoked_at IS NULL;

-- An export key must not be any device's key.
CREATE INDEX devices_by_wg_key ON devices(wg_key);
