package posture

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxOSReleaseBytes caps the os-release file read; real ones are under
// 1 KiB.
const maxOSReleaseBytes = 64 << 10

// maxVersionRunes caps OSVersion, which is shown to people and stored.
const maxVersionRunes = 128

// osVersion reads the distribution and release from os-release (in /etc,
// else /usr/lib, as os-release(5) says), and says where from or why not.
func (c *collector) osVersion() (version, detail string) {
	var data []byte
	var name string
	var err error
	for _, name = range []string{"/etc/os-release", "/usr/lib/os-release"} {
		data, err = readCapped(c.path(name), maxOSReleaseBytes)
		if !errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	if err != nil {
		return unknownString, "cannot read " + name + ": " + errText(err)
	}
	v, err := versionFromOSRelease(parseOSRelease(data))
	if err != nil {
		return unknownString, fmt.Sprintf("%s: %v", name, err)
	}
	return v, ""
}

// versionFromOSRelease picks PRETTY_NAME, or else NAME and VERSION_ID.
func versionFromOSRelease(f map[string]string) (string, error) {
	v := cleanVersion(f["PRETTY_NAME"])
	if v == "" {
		v = cleanVersion(f["NAME"] + " " + f["VERSION_ID"])
		if f["NAME"] == "" || v == "" {
			return "", errors.New("no PRETTY_NAME nor NAME")
		}
	}
	return v, nil
}

// cleanVersion makes an os-release value fit to report: valid UTF-8, no
// control characters, spaces collapsed, bounded length.
func cleanVersion(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Join(strings.FieldsFunc(s, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r)
	}), " ")
	if utf8.RuneCountInString(s) > maxVersionRunes {
		s = string([]rune(s)[:maxVersionRunes]) + "…"
	}
	return s
}

// parseOSRelease parses os-release(5): KEY=VALUE lines, values optionally
// in single quotes (literal) or double quotes (where \ escapes $ " ` and
// \). Comments, blank lines and malformed lines are skipped; the last
// assignment to a key wins, as in the shell.
func parseOSRelease(data []byte) map[string]string {
	fields := make(map[string]string)
	for line := range strings.SplitSeq(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		key, raw, ok := strings.Cut(line, "=")
		if !ok || !isShellName(key) {
			continue
		}
		if v, ok := unquoteShell(raw); ok {
			fields[key] = v
		}
	}
	return fields
}

func isShellName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		if r != '_' && !(r >= 'A' && r <= 'Z') && !(r >= 'a' && r <= 'z') && !(i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// unquoteShell unquotes a whole os-release value; false when the quotes
// do not close.
func unquoteShell(raw string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(raw); i++ {
		switch ch := raw[i]; ch {
		case '\'':
			end := strings.IndexByte(raw[i+1:], '\'')
			if end < 0 {
				return "", false
			}
			b.WriteString(raw[i+1 : i+1+end])
			i += 1 + end
		case '"':
			i++
			for ; i < len(raw) && raw[i] != '"'; i++ {
				if raw[i] == '\\' && i+1 < len(raw) && strings.IndexByte("$\"`\\", raw[i+1]) >= 0 {
					i++
				}
				b.WriteByte(raw[i])
			}
			if i >= len(raw) {
				return "", false
			}
		case '\\':
			if i+1 < len(raw) {
				i++
				b.WriteByte(raw[i])
			}
		default:
			b.WriteByte(ch)
		}
	}
	return b.String(), true
}
