// Package doctor finds, before they bite, the conditions that keep a node from bringing
// its pod network back: above all the DNS ↔ CNI loop (the node's resolver is the cluster
// DNS service, which needs the CNI, whose images need DNS to pull).
//
// Checks are pure functions of what was read (files under a root, facts from containerd
// and the API); reading lives in the callers, so every check is tested on crafted input.
package doctor

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// Status of a check.
type Status string

const (
	OK   Status = "OK"
	Warn Status = "WARN"
	Fail Status = "FAIL"
	Skip Status = "SKIP" // could not be checked; Evidence says why
)

// Result is one check's verdict.
type Result struct {
	Check    string   `json:"check"`
	Status   Status   `json:"status"`
	Summary  string   `json:"summary"`
	Evidence []string `json:"evidence,omitempty"`
	Fix      string   `json:"fix,omitempty"`
}

// ExitCode is 2 if any check failed, 1 if any warned and strict, else 0.
func ExitCode(results []Result, strict bool) int {
	code := 0
	for _, r := range results {
		switch {
		case r.Status == Fail:
			return 2
		case r.Status == Warn && strict:
			code = 1
		}
	}
	return code
}

// Resolvers is what a node resolves names with, read from under root.
type Resolvers struct {
	// ResolvConf are the nameservers of /etc/resolv.conf.
	ResolvConf []string
	// Stub: resolv.conf points at systemd-resolved's stub (127.0.0.53 / 127.0.0.54).
	Stub bool
	// Resolved are systemd-resolved's upstream servers: DNS= and FallbackDNS= of
	// resolved.conf and its drop-ins, and /run/systemd/resolve/resolv.conf.
	Resolved []string
	// Sources maps each server to the files naming it.
	Sources map[string][]string
}

// ReadResolvers reads resolv.conf, resolved.conf (+ drop-ins) and resolved's runtime file under root.
func ReadResolvers(root string) (Resolvers, error) {
	r := Resolvers{Sources: map[string][]string{}}
	add := func(list *[]string, server, file string) {
		server = strings.TrimSpace(server)
		// resolved accepts "IP#name", "IP:port", "[IPv6]:port"
		if i := strings.IndexByte(server, '#'); i >= 0 {
			server = server[:i]
		}
		if h, _, err := net.SplitHostPort(server); err == nil {
			server = h
		}
		if server == "" {
			return
		}
		if !slices.Contains(*list, server) {
			*list = append(*list, server)
		}
		if !slices.Contains(r.Sources[server], file) {
			r.Sources[server] = append(r.Sources[server], file)
		}
	}
	rc := filepath.Join(root, "etc/resolv.conf")
	ns, err := nameservers(rc)
	if err != nil {
		return r, fmt.Errorf("reading %s: %w", rc, err)
	}
	for _, s := range ns {
		if s == "127.0.0.53" || s == "127.0.0.54" {
			r.Stub = true
		}
		add(&r.ResolvConf, s, "/etc/resolv.conf")
	}
	files := []string{filepath.Join(root, "etc/systemd/resolved.conf")}
	for _, dir := range []string{"etc/systemd/resolved.conf.d", "run/systemd/resolved.conf.d", "usr/lib/systemd/resolved.conf.d"} {
		matches, _ := filepath.Glob(filepath.Join(root, dir, "*.conf"))
		sort.Strings(matches)
		files = append(files, matches...)
	}
	for _, f := range files {
		servers, err := resolvedServers(f)
		if err != nil {
			continue // absent: not a systemd-resolved node, or no drop-ins
		}
		for _, s := range servers {
			add(&r.Resolved, s, "/"+strings.TrimPrefix(strings.TrimPrefix(f, root), "/"))
		}
	}
	if ns, err := nameservers(filepath.Join(root, "run/systemd/resolve/resolv.conf")); err == nil {
		for _, s := range ns {
			add(&r.Resolved, s, "/run/systemd/resolve/resolv.conf")
		}
	}
	return r, nil
}

func nameservers(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			out = append(out, fields[1])
		}
	}
	return out, sc.Err()
}

// resolvedServers reads DNS= and FallbackDNS= of a resolved.conf-style file ([Resolve] section).
func resolvedServers(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if strings.HasPrefix(line, "[") {
			section = strings.Trim(line, "[]")
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section != "Resolve" {
			continue
		}
		switch strings.TrimSpace(k) {
		case "DNS", "FallbackDNS":
			out = append(out, strings.Fields(v)...)
		}
	}
	return out, sc.Err()
}

// DNSLoop checks whether name resolution on the node depends on the cluster's DNS service.
// clusterDNS are the cluster DNS service IPs (kube-dns/coredns Service, kubelet clusterDNS).
func DNSLoop(r Resolvers, clusterDNS []string, remedies []string) Result {
	res := Result{Check: "dns-loop"}
	effective := r.ResolvConf
	via := "/etc/resolv.conf"
	if r.Stub {
		effective = r.Resolved
		via = "systemd-resolved (resolv.conf points at its stub)"
	}
	if len(clusterDNS) == 0 {
		res.Status, res.Summary = Skip, "the cluster DNS service IP is unknown (no API access and no kubelet clusterDNS)"
		return res
	}
	var cluster, other []string
	for _, s := range effective {
		if slices.Contains(clusterDNS, s) {
			cluster = append(cluster, s)
		} else {
			other = append(other, s)
		}
	}
	for _, s := range effective {
		res.Evidence = append(res.Evidence, fmt.Sprintf("%s resolves through %s (from %s)", via, s, strings.Join(r.Sources[s], ", ")))
	}
	res.Evidence = append(res.Evidence, "cluster DNS service: "+strings.Join(clusterDNS, ", "))
	fix := "make the node resolve without the cluster: list an upstream resolver that does not run in the cluster first " +
		"(Kubespray: set upstream_dns_servers / resolvconf_extra_dns_servers, or keep the node's own resolver: resolvconf_mode: host_resolvconf with a working upstream)"
	if len(remedies) > 0 {
		fix += "; precache's own remedies: " + strings.Join(remedies, ", ")
	}
	switch {
	case len(effective) == 0:
		res.Status, res.Summary = Warn, "no nameserver configured"
	case len(cluster) == 0:
		res.Status, res.Summary = OK, "the node resolves names without the cluster DNS service"
	case len(other) == 0:
		res.Status = Fail
		res.Summary = fmt.Sprintf("the node's only resolver is the cluster DNS service (%s): if calico-node is lost, its image cannot be pulled and the node cannot recover", strings.Join(cluster, ", "))
		res.Fix = fix
	case slices.Index(effective, cluster[0]) < slices.Index(effective, other[0]):
		res.Status = Warn
		res.Summary = fmt.Sprintf("the cluster DNS service (%s) is asked before %s: without pod networking every lookup first waits for it to time out", cluster[0], other[0])
		res.Fix = fix
	default:
		res.Status, res.Summary = OK, fmt.Sprintf("a resolver outside the cluster (%s) comes first", other[0])
	}
	return res
}
