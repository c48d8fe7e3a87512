package store

import "time"

// OIDCLogin is an identity an OpenID Connect provider vouched for, as the
// controller hands it to ProvisionOIDCUser.
type OIDCLogin struct {
	// Issuer and Subject name the identity for good (OIDC Core §5.7: the
	// only stable pair); the user it is linked to keeps its name even when
	// the IdP's user name claim changes.
	Issuer  string
	Subject string
	// User is the name a new user gets (from the configured claim).
	User string
	// Groups are the group names from the IdP's claim. Only groups that
	// exist in Keyhole are applied; the rest are ignored.
	Groups []string
	Now    time.Time
}
