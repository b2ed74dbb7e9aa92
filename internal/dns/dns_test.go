package dns

import (
	"net"
	"strings"
	"testing"
	"time"
)

func TestServers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		servers []string
		err     string
	}{
		{"IPs", []string{"1.1.1.1", "8.8.8.8"}, ""},
		{"IP and port", []string{"127.0.0.1:5353"}, ""},
		{"IPv6", []string{"2606:4700:4700::1111", "[::1]:53"}, ""},
		{"a name needs DNS", []string{"dns.google"}, "want an IP address"},
		{"empty", []string{" ", ""}, "no servers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Servers(tt.servers)
			if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
				t.Fatalf("Servers(%q) = %v, want %q", tt.servers, err, tt.err)
			}
		})
	}
}

// A server that never answers: Probe gives up at the deadline, not at the resolver's
// own (much longer) timeouts, and IP literals need no lookup at all.
func TestProbeDeadline(t *testing.T) {
	t.Parallel()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	r, err := Servers([]string{pc.LocalAddr().String()})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	failures := Probe(t.Context(), r, []string{"registry.example.test", "192.0.2.10", "registry.example.test"}, time.Now().Add(300*time.Millisecond))
	took := time.Since(start)
	if len(failures) != 1 || failures[0].Host != "registry.example.test" || !strings.Contains(failures[0].Err.Error(), "--dns-timeout") {
		t.Fatalf("failures = %+v, want one for the name only", failures)
	}
	if took > 2*time.Second {
		t.Fatalf("Probe took %s with a 300ms deadline", took)
	}
}
