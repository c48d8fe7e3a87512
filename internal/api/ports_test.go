package api

import (
	"encoding/json"
	"testing"
)

func TestParsePortRange(t *testing.T) {
	tests := []struct {
		in      string
		want    PortRange
		wantErr bool
	}{
		{in: "tcp/443", want: PortRange{"tcp", 443, 443}},
		{in: "UDP/53", want: PortRange{"udp", 53, 53}},
		{in: "tcp/8000-8010", want: PortRange{"tcp", 8000, 8010}},
		{in: " tcp/1-65535 ", want: PortRange{"tcp", 1, 65535}},
		{in: "tcp/0", wantErr: true},
		{in: "tcp/65536", wantErr: true},
		{in: "tcp/10-5", wantErr: true},
		{in: "icmp/1", wantErr: true},
		{in: "443", wantErr: true},
		{in: "tcp/", wantErr: true},
		{in: "tcp/a-b", wantErr: true},
		{in: "tcp/1-", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePortRange(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestPortRangeJSON(t *testing.T) {
	in := []PortRange{{"tcp", 80, 80}, {"udp", 5000, 5010}}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `["tcp/80","udp/5000-5010"]` {
		t.Fatalf("got %s", b)
	}
	var out []PortRange
	if err := json.Unmarshal(b, &out); err != nil || len(out) != 2 || out[1] != in[1] {
		t.Fatalf("round trip: %v %v", out, err)
	}
	if err := json.Unmarshal([]byte(`["tcp/x"]`), &out); err == nil {
		t.Fatal("bad range accepted")
	}
	if !PortsContain(in, "udp", 5005) || PortsContain(in, "tcp", 81) || PortsContain(in, "udp", 80) {
		t.Fatal("PortsContain wrong")
	}
}
