-- 0008: draining gateways.
--
-- An admin drains a gateway to take it out of service (keyhole admin
-- gateway drain): it gets no new grants, and renewals of its grants move
-- to another gateway of its group. Kept in the store so a drain survives
-- a controller restart and holds on every controller of a cluster.
ALTER TABLE gateways ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;
