package api

import (
	"strings"
	"time"
)

// CondPosture names the posture-profile rule condition (RuleConditions.Posture)
// in Error.Unmet and WhyCondition.Name.
const CondPosture = "posture"

// Fact is the answer a device gives about one property of itself: yes,
// no, or unknown when it could not tell. A device never guesses: a value
// it cannot read is unknown, and a requirement never accepts unknown.
type Fact string

// Facts.
const (
	Yes     Fact = "yes"
	No      Fact = "no"
	Unknown Fact = "unknown"
)

// Valid reports whether f is one of Yes, No and Unknown.
func (f Fact) Valid() bool { return f == Yes || f == No || f == Unknown }

// Posture is what a device reports about its own health, collected by the
// client and signed with the device key (SignedPosture). It travels with
// every grant request and renewal, and on its own (POST /v1/device/posture)
// when the client sees it change.
type Posture struct {
	// DeviceID is the device that collected the report: a report
	// presented by another device is refused.
	DeviceID DeviceID `json:"device_id"`
	// CollectedAt is when the client collected it (its clock). The
	// controller refuses reports from the future, older than its maximum
	// report age (--posture-max-age), or older than the device's latest
	// accepted report.
	CollectedAt time.Time `json:"collected_at"`

	// OS is the operating system as Go names it: "linux", "darwin",
	// "windows".
	OS string `json:"os"`
	// OSVersion is the distribution and release ("Debian GNU/Linux 13
	// (trixie)", "macOS 15.1"); "unknown" when it cannot be read.
	OSVersion string `json:"os_version"`
	// Kernel is the kernel release ("6.12.48-1-amd64"); "unknown" when it
	// cannot be read.
	Kernel string `json:"kernel"`
	// ClientVersion is the Keyhole client's version ("0.6.0", "(devel)").
	ClientVersion string `json:"client_version"`

	// DiskEncryption: the volume holding the root file system is
	// encrypted (on Linux: it sits on a dm-crypt device).
	DiskEncryption Fact `json:"disk_encryption"`
	// Firewall: a host firewall filters incoming traffic (on Linux: the
	// netfilter input hook drops or rejects by default or by rule).
	Firewall Fact `json:"firewall"`
	// ScreenLock: the session locks itself when idle.
	ScreenLock Fact `json:"screen_lock"`
	// Details say how each fact above was found, or why it is unknown,
	// keyed by the JSON field name ("disk_encryption": "/ is on
	// dm-crypt device dm-0 (LUKS2)").
	Details map[string]string `json:"details,omitempty"`

	// Checks are the results of the admin-defined checks the controller
	// listed (GET /v1/device/posture/checks), by name.
	Checks []CheckResult `json:"checks,omitempty"`
}

// CheckResult is the outcome of one PostureCheck on the device.
type CheckResult struct {
	Name string `json:"name"`
	// Pass is Yes when the check holds, No when it does not, Unknown when
	// the device could not run it.
	Pass   Fact   `json:"pass"`
	Detail string `json:"detail,omitempty"`
}

// Check returns the result of the named check, and false when the report
// has none.
func (p *Posture) Check(name string) (CheckResult, bool) {
	for _, c := range p.Checks {
		if c.Name == name {
			return c, true
		}
	}
	return CheckResult{}, false
}

// SignedPosture is a Posture as it travels: the exact JSON bytes of the
// report and the device key's signature over them (see trust.SignPosture),
// so the controller checks what it parses.
type SignedPosture struct {
	Report    []byte `json:"report"`    // JSON of a Posture (base64 on the wire)
	Signature []byte `json:"signature"` // ASN.1 ECDSA P-256 (base64 on the wire)
}

// Kinds of PostureCheck.
const (
	// CheckFile: the file at Path exists and is a regular file, and, when
	// SHA256 is set, its contents hash to it.
	CheckFile = "file"
	// CheckProcess: a process whose executable name (Linux: comm, or the
	// base name of its executable) is Process is running.
	CheckProcess = "process"
	// CheckCommand: the command the device's own configuration defines
	// under the check's Name exits 0 within its timeout. The controller
	// never sends a command line: a device runs only what its
	// administrator put in its local configuration (posture.commands), and
	// reports Unknown for a name it does not define.
	CheckCommand = "command"
)

// PostureCheck is an admin-defined check in a posture profile.
type PostureCheck struct {
	// Name identifies the check in reports and reasons; for CheckCommand
	// it is also the name of the command in the device's configuration.
	Name    string `json:"name"`
	Kind    string `json:"kind"`
	Path    string `json:"path,omitempty"`    // CheckFile
	SHA256  string `json:"sha256,omitempty"`  // CheckFile, lowercase hex; empty: existence only
	Process string `json:"process,omitempty"` // CheckProcess
}

// String describes the check for people: `file /etc/edr.conf (sha256
// 9f86d0…)`, `process falcon-sensor`, `command edr-healthy`.
func (c PostureCheck) String() string {
	switch c.Kind {
	case CheckFile:
		if c.SHA256 != "" {
			return "file " + c.Path + " (sha256 " + shortHash(c.SHA256) + ")"
		}
		return "file " + c.Path
	case CheckProcess:
		return "process " + c.Process
	default:
		return c.Kind + " " + c.Name
	}
}

func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12] + "…"
	}
	return h
}

// PostureProfile is a named set of requirements on a device's posture
// (POST /v1/posture, GET /v1/posture, DELETE /v1/posture/{name}); a policy
// rule requires one through RuleConditions.Posture. Every requirement set
// must hold; a fact the device reports as unknown fails it.
type PostureProfile struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// OS lists the operating systems allowed ("linux", "darwin",
	// "windows"); empty allows any.
	OS []string `json:"os,omitempty"`
	// MinClientVersion is the oldest client release allowed ("0.6.0");
	// development builds ("(devel)") never satisfy it.
	MinClientVersion string `json:"min_client_version,omitempty"`
	// DiskEncryption, Firewall, ScreenLock require that fact to be Yes.
	DiskEncryption bool `json:"disk_encryption,omitempty"`
	Firewall       bool `json:"firewall,omitempty"`
	ScreenLock     bool `json:"screen_lock,omitempty"`
	// Checks must each pass.
	Checks []PostureCheck `json:"checks,omitempty"`
}

// String describes the requirements, e.g. "linux or darwin, client ≥ 0.6.0,
// disk encryption, firewall, process falcon-sensor".
func (p PostureProfile) String() string {
	var parts []string
	if len(p.OS) > 0 {
		parts = append(parts, strings.Join(p.OS, " or "))
	}
	if p.MinClientVersion != "" {
		parts = append(parts, "client ≥ "+p.MinClientVersion)
	}
	if p.DiskEncryption {
		parts = append(parts, "disk encryption")
	}
	if p.Firewall {
		parts = append(parts, "firewall")
	}
	if p.ScreenLock {
		parts = append(parts, "screen lock")
	}
	for _, c := range p.Checks {
		parts = append(parts, c.String())
	}
	if len(parts) == 0 {
		return "any posture report"
	}
	return strings.Join(parts, ", ")
}

// PostureChecks answers GET /v1/device/posture/checks: the admin-defined
// checks of every posture profile, which the client runs and reports on.
type PostureChecks struct {
	Checks []PostureCheck `json:"checks"`
	// Interval is how often the client should collect its posture again
	// and report a change (POST /v1/device/posture).
	Interval Duration `json:"interval"`
}
