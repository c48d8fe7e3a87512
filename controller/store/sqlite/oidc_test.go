package sqlite

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

func TestProvisionOIDCUser(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "k.db"))
	defer s.Close()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, g := range []string{"eng", "ops"} {
		if err := s.CreateGroup(ctx, api.Group{Name: g}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateUser(ctx, store.User{User: api.User{Name: "root"}, PasswordHash: "$argon2id$x"}); err != nil {
		t.Fatal(err)
	}
	login := store.OIDCLogin{Issuer: "https://idp", Subject: "s1", User: "alice", Groups: []string{"eng", "unknown"}, Now: now}

	u, err := s.ProvisionOIDCUser(ctx, login)
	if err != nil {
		t.Fatal(err)
	}
	if u.Name != "alice" || u.PasswordHash != "" || !slices.Equal(u.Groups, []string{"eng"}) {
		t.Fatalf("first login: %+v", u)
	}

	// Same identity, new name claim and groups: same user, groups replaced.
	login.User, login.Groups = "alice2", []string{"ops"}
	if u, err = s.ProvisionOIDCUser(ctx, login); err != nil || u.Name != "alice" || !slices.Equal(u.Groups, []string{"ops"}) {
		t.Fatalf("second login: %+v, %v", u, err)
	}
	login.Groups = nil
	if u, err = s.ProvisionOIDCUser(ctx, login); err != nil || len(u.Groups) != 0 {
		t.Fatalf("login without groups: %+v, %v", u, err)
	}

	// Another identity may not take a local user's name, nor alice's.
	for _, name := range []string{"root", "alice"} {
		_, err := s.ProvisionOIDCUser(ctx, store.OIDCLogin{Issuer: "https://idp", Subject: "s2", User: name, Now: now})
		if !errors.Is(err, store.ErrConflict) {
			t.Errorf("identity s2 as %s: %v, want ErrConflict", name, err)
		}
	}
	// The same subject at another issuer is another identity.
	if _, err := s.ProvisionOIDCUser(ctx, store.OIDCLogin{Issuer: "https://other", Subject: "s1", User: "alice", Now: now}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("s1 at another issuer: %v, want ErrConflict", err)
	}

	// Deleting the user removes the link: the next login provisions afresh.
	if err := s.DeleteUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	login.User = "alice3"
	if u, err = s.ProvisionOIDCUser(ctx, login); err != nil || u.Name != "alice3" {
		t.Fatalf("after delete: %+v, %v", u, err)
	}
}
