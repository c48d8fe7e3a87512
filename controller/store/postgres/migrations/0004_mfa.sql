-- 0004: local MFA (TOTP) and recovery codes; the MFA time of a session.

-- One TOTP enrolment per user. secret is sealed with the controller's key
-- (AES-256-GCM, the user name authenticated with it), never in clear. A row
-- with confirmed_at NULL is pending: it does not make logins ask for a code
-- until its first code confirms it. last_step is the newest RFC 6238 time
-- step accepted; a code for it or an earlier step is a replay.
CREATE TABLE user_mfa (
	user_name    text COLLATE "C" PRIMARY KEY REFERENCES users(name) ON DELETE CASCADE,
	secret       text NOT NULL,
	created_at   timestamptz,
	confirmed_at timestamptz,
	last_step    bigint NOT NULL DEFAULT 0
);

-- Single-use recovery codes, by SHA-256 (of the user name and the code).
-- Used codes stay, with used_at, so a second use is told apart from a typo
-- only by the audit trail, not by the answer.
CREATE TABLE recovery_codes (
	user_name text COLLATE "C" NOT NULL REFERENCES user_mfa(user_name) ON DELETE CASCADE,
	hash      text COLLATE "C" NOT NULL,
	used_at   timestamptz,
	PRIMARY KEY (user_name, hash)
);

-- When the login that made the session checked a second factor; NULL for a
-- password-only login. Policy can ask for MFA within N minutes.
ALTER TABLE sessions ADD COLUMN mfa_at timestamptz;
