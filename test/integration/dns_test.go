package integration

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// The DNS-dead tests run inside a network and mount namespace of their own (only loopback;
// /etc/resolv.conf bind-mounted over), so they can make name resolution hang for real.
const inNetns = "PRECACHE_IN_NETNS"

// registryName is a name only the test's DNS server knows; nothing resolves it otherwise.
const registryName = "registry.precache.test"

func TestDNSDead(t *testing.T) {
	if os.Getenv(inNetns) == "" {
		if os.Geteuid() != 0 {
			if os.Getenv("CI") != "" {
				t.Fatal("the DNS-dead test needs root for a network namespace, and CI must not skip it")
			}
			t.Skip("needs root for unshare --net --mount")
		}
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.CommandContext(t.Context(), "unshare", "--net", "--mount", "--", exe, "-test.run", "^TestDNSDead$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), inNetns+"=1", "PRECACHE_BIN="+binary)
		out, err := cmd.CombinedOutput()
		t.Logf("inside the namespace:\n%s", filterLog(string(out)))
		if err != nil {
			t.Fatalf("DNS-dead test in a namespace failed: %v", err)
		}
		return
	}

	// Inside: a resolv.conf whose nameserver never answers, like a node pointing at the
	// cluster DNS service while calico-node is down.
	blackhole(t, "127.0.0.53:53")
	resolv := writeFile(t, "resolv.conf", []byte("nameserver 127.0.0.53\noptions timeout:5 attempts:2\n"))
	if err := syscall.Mount(resolv, "/etc/resolv.conf", "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind-mounting resolv.conf: %v", err)
	}
	_, port, _ := net.SplitHostPort(reg.Host)
	named := filepath.Join(t.TempDir(), "certs.d")
	writeNamedHosts(t, named, "http://"+registryName+":"+port)

	// A bundle made while the registry was reachable (by IP).
	bundle := filepath.Join(t.TempDir(), "calico.tar.zst")
	maker := newNode(t)
	if r := maker.precache(nil, "bundle", "--calico-version", dockerVersion, "-o", bundle); r.code != 0 {
		t.Fatalf("bundle: %s", r.stderr)
	}

	t.Run("falls back to the bundle within 2 s", func(t *testing.T) {
		n := newNode(t)
		r := n.precache([]string{"PRECACHE_HOSTS_DIR=" + named}, "bootstrap", "--calico-version", dockerVersion, "--bundle", bundle)
		if r.code != 0 {
			t.Fatalf("bootstrap exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		if !strings.Contains(r.stdout, "path: bundle (registry names did not resolve: "+registryName) {
			t.Errorf("path not reported:\n%s", r.stdout)
		}
		since := logDuration(t, r.stderr, "falling back to the bundle", "since_start")
		if since > 2*time.Second {
			t.Errorf("decided to fall back %s after the start, want ≤ 2s", since)
		}
		for _, img := range calicoSet(t, dockerVersion) {
			n.assertRight(img.Ref.TagName(), calico[img.Ref.String()])
		}
		t.Logf("fallback decided %s after start; whole bootstrap %s", since, r.took)
	})

	t.Run("no bundle: a clear error in about 2 s", func(t *testing.T) {
		n := newNode(t)
		r := n.precache([]string{"PRECACHE_HOSTS_DIR=" + named}, "bootstrap", "--calico-version", dockerVersion)
		if r.code == 0 || !strings.Contains(r.stderr, registryName) || !strings.Contains(r.stderr, "hint: pass --bundle FILE") {
			t.Fatalf("exit %d\n%s", r.code, r.stderr)
		}
		if r.took > 3*time.Second {
			t.Errorf("took %s to give up", r.took)
		}
	})

	t.Run("--dns-fallback resolves through another server", func(t *testing.T) {
		answer(t, "127.0.0.54:53", registryName, net.IPv4(127, 0, 0, 1))
		n := newNode(t)
		r := n.precache([]string{"PRECACHE_HOSTS_DIR=" + named}, "bootstrap", "--calico-version", dockerVersion, "--dns-fallback", "127.0.0.54")
		if r.code != 0 {
			t.Fatalf("bootstrap --dns-fallback exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		if !strings.Contains(r.stdout, "path: registry (registry names resolved through --dns-fallback 127.0.0.54)") || !strings.Contains(r.stdout, "4 pulled") {
			t.Errorf("stdout:\n%s", r.stdout)
		}
		for _, img := range calicoSet(t, dockerVersion) {
			n.assertRight(img.Ref.TagName(), calico[img.Ref.String()])
		}
	})
}

func writeNamedHosts(t *testing.T, dir, url string) {
	t.Helper()
	for _, ns := range []string{"docker.io", "quay.io"} {
		if err := os.MkdirAll(filepath.Join(dir, ns), 0o755); err != nil {
			t.Fatal(err)
		}
		toml := "server = \"" + url + "\"\n\n[host.\"" + url + "\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
		if err := os.WriteFile(filepath.Join(dir, ns, "hosts.toml"), []byte(toml), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// blackhole listens on addr (UDP and TCP) and never answers.
func blackhole(t *testing.T, addr string) {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close(); l.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
}

// answer serves A records for name on addr (UDP), NXDOMAIN-free minimal DNS.
func answer(t *testing.T, addr, name string, ip net.IP) {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	fqdn := dnsmessage.MustNewName(name + ".")
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			resp := dnsmessage.Message{
				Header:    dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionAvailable: true},
				Questions: []dnsmessage.Question{q},
			}
			if q.Name == fqdn && q.Type == dnsmessage.TypeA {
				var a [4]byte
				copy(a[:], ip.To4())
				resp.Answers = []dnsmessage.Resource{{
					Header: dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60},
					Body:   &dnsmessage.AResource{A: a},
				}}
			} else if q.Name != fqdn {
				resp.Header.RCode = dnsmessage.RCodeNameError
			}
			out, err := resp.Pack()
			if err != nil {
				continue
			}
			_, _ = pc.WriteTo(out, from)
		}
	}()
}

// logDuration finds the JSON log line with msg and returns its duration field.
func logDuration(t *testing.T, logs, msg, field string) time.Duration {
	t.Helper()
	for _, line := range strings.Split(logs, "\n") {
		var entry map[string]any
		if json.Unmarshal([]byte(line), &entry) != nil || entry["msg"] != msg {
			continue
		}
		s, _ := entry[field].(string)
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("%s in %q: %v", field, line, err)
		}
		return d
	}
	t.Fatalf("no %q log line in:\n%s", msg, logs)
	return 0
}

func filterLog(s string) string {
	var keep []string
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, "level=info") || strings.HasPrefix(strings.TrimSpace(line), "time=") {
			continue
		}
		keep = append(keep, line)
	}
	return strings.Join(keep, "\n")
}
