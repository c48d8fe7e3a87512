package client

import (
	"context"
	"fmt"

	"github.com/keyhole-net/keyhole/internal/api"
)

// EnrolMFA starts a TOTP enrolment for the user logged in on the device in
// dir. The answer holds the new secret (shown to the user once); the
// enrolment does nothing until ConfirmMFA confirms it with a first code.
func EnrolMFA(ctx context.Context, dir string) (*api.MFAEnrolment, error) {
	s, err := loadSession(dir)
	if err != nil {
		return nil, err
	}
	var resp api.MFAEnrolment
	if err := s.api.Do(ctx, "POST", "/v1/mfa/enrol", nil, &resp); err != nil {
		return nil, fmt.Errorf("mfa enrol: %w", err)
	}
	return &resp, nil
}

// ConfirmMFA confirms the pending enrolment with a code from the
// authenticator; from then on logins need a code. It returns the recovery
// codes, which the controller shows this once.
func ConfirmMFA(ctx context.Context, dir, code string) (*api.MFAConfirmation, error) {
	s, err := loadSession(dir)
	if err != nil {
		return nil, err
	}
	var resp api.MFAConfirmation
	if err := s.api.Do(ctx, "POST", "/v1/mfa/confirm", api.MFAConfirm{Code: code}, &resp); err != nil {
		return nil, fmt.Errorf("mfa confirm: %w", err)
	}
	return &resp, nil
}
