package auth

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"regexp"
	"testing"
)

func TestNewTokenFormat(t *testing.T) {
	for _, prefix := range []string{PrefixAdmin, PrefixGateway, PrefixSession} {
		re := regexp.MustCompile(`^` + prefix + `_[A-Za-z0-9_-]{43}$`)
		seen := make(map[string]bool)
		for range 1000 {
			tok, err := NewToken(prefix)
			if err != nil {
				t.Fatalf("NewToken(%q): %v", prefix, err)
			}
			v := tok.Reveal()
			if !re.MatchString(v) {
				t.Fatalf("token %q does not match %s", v, re)
			}
			if seen[v] {
				t.Fatalf("NewToken(%q) repeated %q", prefix, v)
			}
			seen[v] = true
		}
	}
}

func TestNewTokenPrefix(t *testing.T) {
	tok, err := NewToken("khadm_")
	if err != nil {
		t.Fatal(err)
	}
	if v := tok.Reveal(); len(v) != len("khadm_")+43 || v[:6] != "khadm_" {
		t.Errorf("NewToken(\"khadm_\") = %q, want one underscore after the prefix", v)
	}
	for _, bad := range []string{"", "_", "KHADM", "kh-adm", "kh adm", "averyveryverylongprefix", "kh\x00"} {
		if tok, err := NewToken(bad); err == nil {
			t.Errorf("NewToken(%q) = %q, want an error", bad, tok.Reveal())
		}
	}
}

func TestTokenIsNeverPrinted(t *testing.T) {
	tok, err := NewToken(PrefixSession)
	if err != nil {
		t.Fatal(err)
	}
	secret := tok.Reveal()
	type holder struct {
		Token Token
		Ptr   *Token
	}
	var out []string
	for _, verb := range []string{"%v", "%s", "%+v", "%#v", "%q", "%x", "%X", "%d", "%10.3s", "%T %v"} {
		out = append(out,
			fmt.Sprintf(verb, tok),
			fmt.Sprintf(verb, holder{Token: tok, Ptr: &tok}),
			fmt.Sprintf(verb, []Token{tok}),
			fmt.Sprintf(verb, map[string]Token{"k": tok}),
		)
	}
	out = append(out, fmt.Sprint(tok), fmt.Sprintln(tok), tok.String(), tok.GoString())
	j, err := json.Marshal(holder{Token: tok, Ptr: &tok})
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, string(j))
	for _, h := range []func(*bytes.Buffer) slog.Handler{
		func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
		func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
	} {
		var buf bytes.Buffer
		slog.New(h(&buf)).Info("login", "session", tok, "holder", holder{Token: tok})
		out = append(out, buf.String())
	}
	for _, s := range out {
		if bytes.Contains([]byte(s), []byte(secret)) || bytes.Contains([]byte(s), []byte(fmt.Sprintf("%x", secret))) {
			t.Errorf("token leaked: %s", s)
		}
	}
	if fmt.Sprint(tok) != "[redacted]" || fmt.Sprintf("%#v", tok) != "[redacted]" {
		t.Errorf("got %q and %q, want [redacted]", fmt.Sprint(tok), fmt.Sprintf("%#v", tok))
	}
}

func TestHashToken(t *testing.T) {
	// SHA-256("abc") from FIPS 180-2, appendix B.1.
	if got, want := HashToken("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; got != want {
		t.Errorf("HashToken(abc) = %s, want %s", got, want)
	}
	tok, err := NewToken(PrefixAdmin)
	if err != nil {
		t.Fatal(err)
	}
	first := HashToken(tok.Reveal())
	for range 3 {
		if again := HashToken(tok.Reveal()); again != first {
			t.Fatalf("HashToken is not stable: %s then %s", first, again)
		}
	}
	if HashToken(tok.Reveal()) == HashToken(tok.Reveal()+"x") {
		t.Error("HashToken ignores a change")
	}
}

func TestNewID(t *testing.T) {
	re := regexp.MustCompile(`^usr_[a-z2-7]{12}$`)
	seen := make(map[string]bool)
	for range 10000 {
		id := NewID("usr")
		if !re.MatchString(id) {
			t.Fatalf("NewID(usr) = %q, want %s", id, re)
		}
		if seen[id] {
			t.Fatalf("NewID repeated %q", id)
		}
		seen[id] = true
	}
	if id := NewID("tok_"); !regexp.MustCompile(`^tok_[a-z2-7]{12}$`).MatchString(id) {
		t.Errorf("NewID(tok_) = %q, want one underscore", id)
	}
}
