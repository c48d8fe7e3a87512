-- 0005: policy rule conditions, device approval, and the request facts a
-- grant was allowed on.

-- A rule's conditions (MFA age, time window, source prefixes, approved
-- device) as the JSON of api.RuleConditions; 'null' for none. They are only
-- ever read whole, with the rule.
ALTER TABLE policy_rules ADD COLUMN conditions jsonb NOT NULL DEFAULT 'null';

-- Whether an admin approved the device. Devices enrolled before approval
-- existed enrolled when none was required, as new devices still do without
-- --require-device-approval: they count as approved.
ALTER TABLE devices ADD COLUMN approved boolean NOT NULL DEFAULT true;

-- The facts of the last request that allowed the grant (its creation or
-- latest renewal): the client's address as the controller saw it ('' for
-- unknown) and the session's last MFA (NULL for never). Re-evaluation
-- without a request — a policy change, a time window closing — checks rule
-- conditions against them.
ALTER TABLE grants ADD COLUMN source text NOT NULL DEFAULT '';
ALTER TABLE grants ADD COLUMN mfa_at timestamptz;
