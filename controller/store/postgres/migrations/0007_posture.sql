-- 0007: device posture, and the pin of the device key.
--
-- Posture profiles are named requirements on a device's posture report
-- that policy rules name as a condition; the body is the JSON of
-- api.PostureProfile, only ever read whole.
CREATE TABLE posture_profiles (
	name       text COLLATE "C" PRIMARY KEY,
	body       jsonb NOT NULL,
	created_at timestamptz,
	updated_at timestamptz
);

-- A device's latest accepted posture report (the JSON of api.Posture; NULL
-- for none), when the controller accepted it, and when the device
-- collected it: a report collected before the stored one is refused, so
-- an old report cannot be replayed over a newer one.
ALTER TABLE devices ADD COLUMN posture jsonb;
ALTER TABLE devices ADD COLUMN posture_at timestamptz;
ALTER TABLE devices ADD COLUMN posture_collected_at timestamptz;

-- The SHA-256 of the device's current public key (see trust.KeyPin): only
-- a certificate for that key is the device, so a key rotation or a new
-- login retires the old key's certificates at once. '' (devices from
-- before) accepts any certificate the CA issued to the device.
ALTER TABLE devices ADD COLUMN key_pin text NOT NULL DEFAULT '';
