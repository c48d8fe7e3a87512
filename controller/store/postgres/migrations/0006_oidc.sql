-- 0006: identities from an OpenID Connect provider.
--
-- A user provisioned at an OIDC login is linked to the provider's
-- (issuer, subject), the only pair OIDC promises is stable: the next login
-- finds the same user even if the IdP's user name claim changed, and a name
-- the IdP hands out cannot take over a local user or another identity's.
-- Deleting the user removes the link; the next login provisions afresh.
CREATE TABLE oidc_identities (
	issuer     text COLLATE "C" NOT NULL,
	subject    text COLLATE "C" NOT NULL,
	user_name  text COLLATE "C" NOT NULL UNIQUE REFERENCES users(name) ON DELETE CASCADE ON UPDATE CASCADE,
	created_at timestamptz,
	last_login timestamptz,
	PRIMARY KEY (issuer, subject)
);
