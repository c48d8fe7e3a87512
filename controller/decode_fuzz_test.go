package controller

import (
	"errors"
	"strings"
	"testing"

	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// FuzzDecodeRequest feeds arbitrary bodies to the decoder of every request
// type the API accepts: it must never panic, and every failure must be a
// client error (4xx), never an internal one.
func FuzzDecodeRequest(f *testing.F) {
	seeds := []string{
		`{"name":"alice","password":"correct horse","groups":["eng"]}`,
		`{"name":"wiki","addresses":["198.51.100.0/24"],"domains":["wiki.corp.internal"],"ports":["tcp/443","udp/5000-5010"],"gateway_group":"site"}`,
		`{"action":"allow","groups":["eng"],"apps":["wiki"],"position":1}`,
		`{"app":"wiki.corp.internal","proto":"tcp","port":443}`,
		`{"token":"khgw_x","name":"gw","csr":"-----BEGIN","wg_public_key":"AAAA"}`,
		`{"records":[{"grant_id":"grt_1","proto":"tcp","start":"2026-01-01T00:00:00Z","end":"2026-01-01T00:00:01Z"}]}`,
		`{"ttl":"1h","group":"site"}`,
		`{"ports":["tcp/0"]}`, `[]`, `null`, `{"a":1}{"b":2}`, "\x00\xff", `{"ports":["tcp/1-"]}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	targets := []func() any{
		func() any { return &api.UserCreate{} },
		func() any { return &api.UserUpdate{} },
		func() any { return &api.AppCreate{} },
		func() any { return &api.PolicyRuleCreate{} },
		func() any { return &api.GrantRequest{} },
		func() any { return &api.LoginRequest{} },
		func() any { return &api.EnrolRequest{} },
		func() any { return &api.GatewayHello{} },
		func() any { return &api.GatewayAck{} },
		func() any { return &api.FlowBatch{} },
		func() any { return &api.GatewayTokenCreate{} },
		func() any { return &api.CertificateRenewal{} },
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, newT := range targets {
			err := decodeBody(body, newT())
			if err == nil {
				continue
			}
			var ae *apiError
			if !errors.As(err, &ae) || ae.status != 400 {
				t.Fatalf("decode error is not a 400 apiError: %v", err)
			}
		}
	})
}

// FuzzPostureReport: whatever a device signs and sends as its posture
// report, verification and validation return an error or a report, and
// never panic; a report they accept prints on one line.
func FuzzPostureReport(f *testing.F) {
	k, err := trust.NewKey()
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(`{"device_id":"dev_a","collected_at":"2026-11-23T10:00:00Z","os":"linux","disk_encryption":"yes","firewall":"no","screen_lock":"unknown","checks":[{"name":"edr","pass":"yes"}]}`))
	f.Add([]byte(`{"details":{"a":"b"},"checks":[{"pass":"maybe"}]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, report []byte) {
		sp, err := trust.SignPostureReport(report, k)
		if err != nil {
			return
		}
		p, err := trust.VerifyPosture(sp, &k.PublicKey)
		if err != nil {
			return
		}
		if validPosture(&p) == nil && strings.ContainsAny(postureSummary(p), "\n\r") {
			t.Fatalf("summary of an accepted report spans lines: %q", postureSummary(p))
		}
	})
}
