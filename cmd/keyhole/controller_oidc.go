package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/pflag"

	"github.com/keyhole-net/keyhole/controller"
	"github.com/keyhole-net/keyhole/controller/auth"
)

// oidcControllerFlags configure the controller as an OpenID Connect relying
// party (keyhole login --oidc).
type oidcControllerFlags struct {
	issuer, clientID, secretFile string
	scopes                       []string
	userClaim, groupsClaim       string
	mfaMethods                   []string
}

func (o *oidcControllerFlags) register(f *pflag.FlagSet) {
	f.StringVar(&o.issuer, "oidc-issuer", "", "OpenID Connect issuer URL of the identity provider (enables keyhole login --oidc)")
	f.StringVar(&o.clientID, "oidc-client-id", "", "client ID of the controller at the identity provider")
	f.StringVar(&o.secretFile, "oidc-client-secret-file", "", "file with the client secret of the controller at the identity provider")
	f.StringSliceVar(&o.scopes, "oidc-scopes", controller.DefaultOIDCScopes, "scopes to ask for (add the one that releases the groups claim, often groups)")
	f.StringVar(&o.userClaim, "oidc-user-claim", controller.DefaultOIDCUserClaim, "claim that names a new user: preferred_username, email or sub")
	f.StringVar(&o.groupsClaim, "oidc-groups-claim", controller.DefaultOIDCGroupsClaim, "claim with the user's groups (groups that exist in Keyhole are applied at each login)")
	f.StringSliceVar(&o.mfaMethods, "oidc-mfa-methods", controller.DefaultOIDCMFAMethods, "amr values (RFC 8176) that make an IdP login count as MFA for mfa_within rules")
}

// config returns the OIDC configuration, nil without --oidc-issuer.
func (o *oidcControllerFlags) config() (*controller.OIDCConfig, error) {
	if o.issuer == "" {
		if o.clientID != "" || o.secretFile != "" {
			return nil, errors.New("--oidc-client-id and --oidc-client-secret-file need --oidc-issuer")
		}
		return nil, nil
	}
	if o.clientID == "" {
		return nil, errors.New("--oidc-issuer needs --oidc-client-id")
	}
	cfg := &controller.OIDCConfig{
		Issuer: o.issuer, ClientID: o.clientID, Scopes: o.scopes,
		UserClaim: o.userClaim, GroupsClaim: o.groupsClaim, MFAMethods: o.mfaMethods,
	}
	switch o.userClaim {
	case "preferred_username", "email", "sub":
	default:
		return nil, fmt.Errorf("--oidc-user-claim %q: want preferred_username, email or sub", o.userClaim)
	}
	if o.secretFile != "" {
		b, err := os.ReadFile(o.secretFile)
		if err != nil {
			return nil, fmt.Errorf("--oidc-client-secret-file: %w", err)
		}
		cfg.ClientSecret = auth.Token(bytes.TrimSpace(b))
	}
	return cfg, nil
}
