package api

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// PortRange is a protocol and an inclusive port range, written "tcp/443",
// "tcp/8000-8010" or "udp/53". It travels as that string.
type PortRange struct {
	Proto string // "tcp" or "udp"
	First uint16
	Last  uint16
}

// ParsePortRange parses "tcp/443" or "udp/5000-5010".
func ParsePortRange(s string) (PortRange, error) {
	proto, ports, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return PortRange{}, fmt.Errorf("port range %q: want PROTO/PORT or PROTO/FIRST-LAST, e.g. tcp/443", s)
	}
	proto = strings.ToLower(proto)
	if proto != "tcp" && proto != "udp" {
		return PortRange{}, fmt.Errorf("port range %q: protocol must be tcp or udp", s)
	}
	first, last, isRange := strings.Cut(ports, "-")
	a, err := parsePort(first)
	if err != nil {
		return PortRange{}, fmt.Errorf("port range %q: %w", s, err)
	}
	b := a
	if isRange {
		if b, err = parsePort(last); err != nil {
			return PortRange{}, fmt.Errorf("port range %q: %w", s, err)
		}
	}
	if b < a {
		return PortRange{}, fmt.Errorf("port range %q: first port is above last", s)
	}
	return PortRange{Proto: proto, First: a, Last: b}, nil
}

// ParsePortRanges parses a comma-separated list of port ranges.
func ParsePortRanges(s string) ([]PortRange, error) {
	var out []PortRange
	for _, f := range strings.Split(s, ",") {
		if strings.TrimSpace(f) == "" {
			continue
		}
		pr, err := ParsePortRange(f)
		if err != nil {
			return nil, err
		}
		out = append(out, pr)
	}
	return out, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q must be a number from 1 to 65535", s)
	}
	return uint16(n), nil
}

// Contains reports whether the range covers proto/port.
func (p PortRange) Contains(proto string, port uint16) bool {
	return p.Proto == proto && port >= p.First && port <= p.Last
}

// String returns the canonical text form.
func (p PortRange) String() string {
	if p.First == p.Last {
		return fmt.Sprintf("%s/%d", p.Proto, p.First)
	}
	return fmt.Sprintf("%s/%d-%d", p.Proto, p.First, p.Last)
}

// MarshalText implements encoding.TextMarshaler.
func (p PortRange) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *PortRange) UnmarshalText(b []byte) error {
	v, err := ParsePortRange(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// PortsContain reports whether any range in ps covers proto/port.
func PortsContain(ps []PortRange, proto string, port uint16) bool {
	for _, p := range ps {
		if p.Contains(proto, port) {
			return true
		}
	}
	return false
}

// FormatPortRanges joins ranges with commas.
func FormatPortRanges(ps []PortRange) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// Duration is a time.Duration that travels as a Go duration string ("10m").
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// String prints d as time.Duration does, without zero trailing units:
// "15m", "1h30m", "1h".
func (d Duration) String() string {
	s := time.Duration(d).String()
	s, _ = strings.CutSuffix(s, "m0s")
	if s != time.Duration(d).String() {
		s += "m"
	}
	if t, ok := strings.CutSuffix(s, "h0m"); ok {
		s = t + "h"
	}
	return s
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("duration %q: %w", b, err)
	}
	*d = Duration(v)
	return nil
}
