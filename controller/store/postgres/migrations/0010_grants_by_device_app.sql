-- 0010: the live grants of one device for one app, the first read of every
-- grant request (does the device already hold one to extend?). The index on
-- (device_id, not_after) alone made that read walk every live grant of the
-- device, which grows with the apps it uses.
CREATE INDEX grants_live_by_device_app ON grants(device_id, app_id, not_after) WHERE revoked_at IS NULL;
