package policy

import (
	"errors"
	"strings"
	"testing"

	"github.com/keyhole-net/keyhole/internal/api"
)

func healthy() *api.Posture {
	return &api.Posture{
		DeviceID: "dev_a", OS: "linux", OSVersion: "Debian GNU/Linux 13 (trixie)", Kernel: "6.12.0", ClientVersion: "0.7.1",
		DiskEncryption: api.Yes, Firewall: api.Yes, ScreenLock: api.Unknown,
		Details: map[string]string{"screen_lock": "no graphical session"},
		Checks:  []api.CheckResult{{Name: "edr", Pass: api.Yes}, {Name: "agent", Pass: api.No, Detail: "exit status 3"}},
	}
}

func TestPostureFailures(t *testing.T) {
	edr := api.PostureCheck{Name: "edr", Kind: api.CheckProcess, Process: "falcon-sensor"}
	agent := api.PostureCheck{Name: "agent", Kind: api.CheckCommand}
	missing := api.PostureCheck{Name: "cfg", Kind: api.CheckFile, Path: "/etc/edr.conf"}
	tests := []struct {
		name   string
		prof   api.PostureProfile
		mutate func(p *api.Posture)
		nilRep bool
		want   []string // substrings, one per failure, in order
	}{
		{name: "empty profile", prof: api.PostureProfile{Name: "any"}},
		{name: "all met", prof: api.PostureProfile{Name: "p", OS: []string{"linux"}, MinClientVersion: "0.7.0", DiskEncryption: true, Firewall: true, Checks: []api.PostureCheck{edr}}},
		{name: "no report", prof: api.PostureProfile{Name: "p"}, nilRep: true, want: []string{"send a device posture report"}},
		{name: "disk off", prof: api.PostureProfile{Name: "p", DiskEncryption: true},
			mutate: func(p *api.Posture) {
				p.DiskEncryption = api.No
				p.Details = map[string]string{"disk_encryption": "/ is on /dev/sda2"}
			},
			want: []string{"disk encryption on / is required: encrypt the root volume (/ is on /dev/sda2)"}},
		{name: "unknown is not yes", prof: api.PostureProfile{Name: "p", ScreenLock: true},
			want: []string{"a screen lock is required: this device could not tell (unknown); turn on the screen lock (no graphical session)"}},
		{name: "wrong os", prof: api.PostureProfile{Name: "p", OS: []string{"darwin", "windows"}}, want: []string{"darwin or windows; this one runs linux"}},
		{name: "old client", prof: api.PostureProfile{Name: "p", MinClientVersion: "0.8.0"}, want: []string{"update the Keyhole client to 0.8.0 or later; this one is 0.7.1"}},
		{name: "devel client", prof: api.PostureProfile{Name: "p", MinClientVersion: "0.1.0"}, mutate: func(p *api.Posture) { p.ClientVersion = "(devel)" }, want: []string{"this one is (devel)"}},
		{name: "v-prefixed version", prof: api.PostureProfile{Name: "p", MinClientVersion: "v0.7.1"}, mutate: func(p *api.Posture) { p.ClientVersion = "v0.7.1" }},
		{name: "checks", prof: api.PostureProfile{Name: "p", Checks: []api.PostureCheck{edr, agent, missing}},
			want: []string{"check agent (command agent) failed on this device: exit status 3", "check cfg (file /etc/edr.conf) is required: this device did not report it"}},
		{name: "firewall off", prof: api.PostureProfile{Name: "p", Firewall: true}, mutate: func(p *api.Posture) { p.Firewall = api.No }, want: []string{"turn on the host firewall"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := healthy()
			if tt.mutate != nil {
				tt.mutate(p)
			}
			if tt.nilRep {
				p = nil
			}
			got := PostureFailures(tt.prof, p)
			if len(got) != len(tt.want) {
				t.Fatalf("failures = %q, want %d like %q", got, len(tt.want), tt.want)
			}
			for i := range got {
				if !strings.Contains(got[i], tt.want[i]) {
					t.Errorf("failure %d = %q, want it to contain %q", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestPostureCondition(t *testing.T) {
	profs := []api.PostureProfile{{Name: "encrypted", DiskEncryption: true}}
	rules := []api.PolicyRule{
		{ID: "r1", Position: 1, Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"wiki"}, RuleConditions: api.RuleConditions{Posture: "encrypted"}},
		{ID: "r2", Position: 2, Action: api.Allow, Groups: []string{"eng"}, Apps: []string{"ghost"}, RuleConditions: api.RuleConditions{Posture: "deleted"}},
	}
	set, err := Compile(rules, profs...)
	if err != nil {
		t.Fatal(err)
	}
	sub := Subject{User: "alice", Groups: []string{"eng"}, Posture: healthy()}
	if d := set.Evaluate(sub, "wiki"); !d.Allow || d.Rule != "r1" {
		t.Fatalf("encrypted device: %+v, want allowed by r1", d)
	}
	off := healthy()
	off.DiskEncryption = api.No
	sub.Posture = off
	d := set.Evaluate(sub, "wiki")
	if d.Allow || d.Unmet != CondPosture || !strings.Contains(d.Reason, "disk encryption on / is required") {
		t.Fatalf("unencrypted device: %+v, want a denial naming disk encryption", d)
	}
	if names := d.Unmet.Names(); len(names) != 1 || names[0] != api.CondPosture {
		t.Errorf("Unmet.Names() = %q", names)
	}
	sub.Posture = nil
	if d := set.Evaluate(sub, "wiki"); d.Allow || !strings.Contains(d.Reason, "send a device posture report") {
		t.Fatalf("no report: %+v", d)
	}
	// A rule naming a profile that does not exist fails closed.
	sub.Posture = healthy()
	d = set.Evaluate(sub, "ghost")
	if d.Allow || !strings.Contains(d.Reason, "posture profile deleted, which does not exist") {
		t.Fatalf("missing profile: %+v", d)
	}
	// Explain agrees and shows the profile.
	_, why := set.Explain(Subject{User: "alice", Groups: []string{"eng"}, Posture: off}, "wiki")
	c := why[0].Conditions[0]
	if c.Name != api.CondPosture || !c.Checked || c.Met || !strings.Contains(c.Want, "disk encryption") || !strings.Contains(c.Got, "encrypt the root volume") {
		t.Errorf("explain condition = %+v", c)
	}
}

func TestValidateProfile(t *testing.T) {
	good := api.PostureProfile{Name: "corp-laptop", OS: []string{"linux"}, MinClientVersion: "0.7.0", DiskEncryption: true,
		Checks: []api.PostureCheck{
			{Name: "edr", Kind: api.CheckProcess, Process: "falcon-sensor"},
			{Name: "cfg", Kind: api.CheckFile, Path: "/etc/edr.conf", SHA256: strings.Repeat("ab", 32)},
			{Name: "agent-ok", Kind: api.CheckCommand},
		}}
	if err := ValidateProfile(good); err != nil {
		t.Fatalf("good profile: %v", err)
	}
	bad := map[string]func(p *api.PostureProfile){
		"empty name":       func(p *api.PostureProfile) { p.Name = "" },
		"name with space":  func(p *api.PostureProfile) { p.Name = "corp laptop" },
		"unknown os":       func(p *api.PostureProfile) { p.OS = []string{"plan9"} },
		"bad version":      func(p *api.PostureProfile) { p.MinClientVersion = "latest" },
		"relative path":    func(p *api.PostureProfile) { p.Checks[1].Path = "etc/edr.conf" },
		"uppercase sha":    func(p *api.PostureProfile) { p.Checks[1].SHA256 = strings.Repeat("AB", 32) },
		"short sha":        func(p *api.PostureProfile) { p.Checks[1].SHA256 = "abcd" },
		"command argv":     func(p *api.PostureProfile) { p.Checks[2].Path = "/bin/sh" },
		"unknown kind":     func(p *api.PostureProfile) { p.Checks[0].Kind = "registry" },
		"duplicate check":  func(p *api.PostureProfile) { p.Checks[1].Name = "edr" },
		"control char":     func(p *api.PostureProfile) { p.Checks[0].Process = "x\ny" },
		"relative process": func(p *api.PostureProfile) { p.Checks[0].Process = "bin/x" },
		"too many checks": func(p *api.PostureProfile) {
			p.Checks = nil
			for i := range maxProfileChecks + 1 {
				p.Checks = append(p.Checks, api.PostureCheck{Name: "c" + strings.Repeat("x", i%5) + string(rune('a'+i%26)) + string(rune('a'+i/26)), Kind: api.CheckCommand})
			}
		},
	}
	for name, mutate := range bad {
		t.Run(name, func(t *testing.T) {
			p := good
			p.OS = append([]string(nil), good.OS...)
			p.Checks = append([]api.PostureCheck(nil), good.Checks...)
			mutate(&p)
			if err := ValidateProfile(p); !errors.Is(err, ErrInvalidRule) {
				t.Errorf("ValidateProfile = %v, want ErrInvalidRule", err)
			}
		})
	}
}
