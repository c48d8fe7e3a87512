package posture

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseOSRelease(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr bool
	}{
		{
			name: "debian",
			in: `PRETTY_NAME="Debian GNU/Linux 13 (trixie)"
NAME="Debian GNU/Linux"
VERSION_ID="13"
ID=debian
`,
			want: "Debian GNU/Linux 13 (trixie)",
		},
		{name: "single quotes", in: "PRETTY_NAME='Fedora Linux 41 (Workstation Edition)'\n", want: "Fedora Linux 41 (Workstation Edition)"},
		{name: "unquoted", in: "PRETTY_NAME=Alpine\n", want: "Alpine"},
		{name: "escapes in double quotes", in: `PRETTY_NAME="A \"quoted\" \$name\\ \x"` + "\n", want: `A "quoted" $name\ \x`},
		{name: "no pretty name", in: "NAME=\"Arch Linux\"\nVERSION_ID=rolling\n", want: "Arch Linux rolling"},
		{name: "name only", in: "NAME=Gentoo\n", want: "Gentoo"},
		{name: "empty pretty name", in: "PRETTY_NAME=\"\"\nNAME=Void\n", want: "Void"},
		{name: "comments and blanks", in: "# PRETTY_NAME=nope\n\n  PRETTY_NAME=\"Yes\"  \n", want: "Yes"},
		{name: "last assignment wins", in: "PRETTY_NAME=one\nPRETTY_NAME=two\n", want: "two"},
		{name: "unclosed quote skipped", in: "PRETTY_NAME=\"broken\nNAME=Fallback\n", want: "Fallback"},
		{name: "bad key skipped", in: "1PRETTY_NAME=x\nPRETTY-NAME=y\nNAME=z\n", want: "z"},
		{name: "control characters removed", in: "PRETTY_NAME=\"Evil\x1b[31m\tOS\"\n", want: "Evil [31m OS"},
		{name: "crlf", in: "PRETTY_NAME=\"Windows line ends\"\r\n", want: "Windows line ends"},
		{name: "nothing useful", in: "ID=debian\nVERSION_ID=12\n", wantErr: true},
		{name: "empty", in: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := versionFromOSRelease(parseOSRelease([]byte(tt.in)))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("version = %q, %v; want %q (error %v)", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestOSVersionFiles(t *testing.T) {
	t.Run("etc", func(t *testing.T) {
		r := newFakeRoot(t)
		r.write("/etc/os-release", "PRETTY_NAME=\"From etc\"\n")
		r.write("/usr/lib/os-release", "PRETTY_NAME=\"From usr\"\n")
		if v, d := r.collector().osVersion(); v != "From etc" || d != "" {
			t.Errorf("osVersion() = %q, %q", v, d)
		}
	})
	t.Run("usr/lib when etc has none", func(t *testing.T) {
		r := newFakeRoot(t)
		r.write("/usr/lib/os-release", "PRETTY_NAME=\"From usr\"\n")
		if v, d := r.collector().osVersion(); v != "From usr" || d != "" {
			t.Errorf("osVersion() = %q, %q", v, d)
		}
	})
	t.Run("neither", func(t *testing.T) {
		r := newFakeRoot(t)
		v, d := r.collector().osVersion()
		if v != "unknown" {
			t.Errorf("osVersion() = %q, want unknown", v)
		}
		contains(t, "detail", d, "cannot read /usr/lib/os-release: no such file or directory")
	})
	t.Run("no name", func(t *testing.T) {
		r := newFakeRoot(t)
		r.write("/etc/os-release", "ID=x\n")
		v, d := r.collector().osVersion()
		if v != "unknown" {
			t.Errorf("osVersion() = %q, want unknown", v)
		}
		contains(t, "detail", d, "/etc/os-release: no PRETTY_NAME nor NAME")
	})
	t.Run("huge", func(t *testing.T) {
		r := newFakeRoot(t)
		r.write("/etc/os-release", "PRETTY_NAME=x\n"+strings.Repeat("#", maxOSReleaseBytes))
		v, d := r.collector().osVersion()
		if v != "unknown" {
			t.Errorf("osVersion() = %q, want unknown", v)
		}
		contains(t, "detail", d, "longer than")
	})
}

// FuzzOSRelease feeds arbitrary files to the os-release parser: it must
// not panic, and a version it reports must be printable, on one line, and
// bounded. Seeds are in testdata/fuzz/FuzzOSRelease and below.
func FuzzOSRelease(f *testing.F) {
	f.Add([]byte("PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"13\"\n"))
	f.Add([]byte("NAME='Arch Linux'\nVERSION_ID=rolling\n"))
	f.Add([]byte(`PRETTY_NAME="a\"b\\c\$d` + "\"\n"))
	f.Add([]byte("PRETTY_NAME=\"unterminated\n"))
	f.Add([]byte("PRETTY_NAME=a'b'\"c\"\\d\n"))
	f.Add([]byte("PRETTY_NAME=\xff\xfe\x00\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := versionFromOSRelease(parseOSRelease(data))
		if err != nil {
			return
		}
		if v == "" || !utf8.ValidString(v) || strings.ContainsAny(v, "\n\r\t\x00") {
			t.Fatalf("version %q is not fit to report", v)
		}
		if n := utf8.RuneCountInString(v); n > maxVersionRunes+1 {
			t.Fatalf("version has %d runes, more than %d", n, maxVersionRunes+1)
		}
	})
}
