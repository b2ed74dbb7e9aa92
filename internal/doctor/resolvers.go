package doctor

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"path"
	"slices"
	"strings"

	"github.com/precache/precache/internal/hostfs"
)

// Resolvers is what a node resolves names with, read under its root.
type Resolvers struct {
	// ResolvConfPath is /etc/resolv.conf as the node resolves it, e.g.
	// "/etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf".
	ResolvConfPath string
	// ResolvConf are the nameservers of /etc/resolv.conf, in order.
	ResolvConf []string
	// Stub: resolv.conf points at systemd-resolved's stub (127.0.0.53 / 127.0.0.54).
	Stub bool
	// Resolved are the servers systemd-resolved uses, in order: those of
	// /run/systemd/resolve/resolv.conf when it exists (resolved writes there its DNS= and
	// per-link servers, or its FallbackDNS= servers when it has none), else DNS= of
	// resolved.conf and its drop-ins, else their FallbackDNS=.
	Resolved []string
	// DNS and FallbackDNS are the lists resolved.conf and its drop-ins leave, in the order
	// systemd reads them (an empty assignment resets a list).
	DNS, FallbackDNS []string
	// Sources maps each server to where it is named: "file:line", node paths.
	Sources map[string][]string
	// FallbackSources is Sources for FallbackDNS= lines.
	FallbackSources map[string][]string
}

// Effective are the servers the node's lookups go to, and through what.
func (r Resolvers) Effective() (servers []string, via string) {
	if r.Stub {
		return r.Resolved, "systemd-resolved (resolv.conf points at its stub)"
	}
	return r.ResolvConf, "/etc/resolv.conf"
}

// FallbackIgnored: FallbackDNS= is set but systemd-resolved does not use it, because a
// DNS= server (global or per link) is configured.
func (r Resolvers) FallbackIgnored() bool {
	if len(r.FallbackDNS) == 0 {
		return false
	}
	if len(r.DNS) > 0 {
		return true
	}
	for _, s := range r.Resolved {
		if !slices.Contains(r.FallbackDNS, s) {
			return true
		}
	}
	return false
}

// Where systemd-resolved reads its configuration: the first main file found, then the
// drop-ins of every directory, ordered by file name, a name in an earlier directory
// hiding the same name in a later one (systemd.syntax(7), resolved.conf(5)).
var (
	resolvedMain = []string{"/etc/systemd/resolved.conf", "/run/systemd/resolved.conf",
		"/usr/local/lib/systemd/resolved.conf", "/usr/lib/systemd/resolved.conf"}
	resolvedDropins = []string{"/etc/systemd/resolved.conf.d", "/run/systemd/resolved.conf.d",
		"/usr/local/lib/systemd/resolved.conf.d", "/usr/lib/systemd/resolved.conf.d"}
)

// resolvedRuntime is the file systemd-resolved writes with the servers it uses.
const resolvedRuntime = "/run/systemd/resolve/resolv.conf"

// ReadResolvers reads /etc/resolv.conf, resolved.conf (+ drop-ins) and resolved's runtime
// file under root, following links inside root as the node would.
func ReadResolvers(root string) (Resolvers, error) {
	fsys := hostfs.Root(root)
	r := Resolvers{Sources: map[string][]string{}, FallbackSources: map[string][]string{}}
	data, p, err := fsys.ReadFile("/etc/resolv.conf")
	r.ResolvConfPath = p.String()
	if err != nil {
		return r, fmt.Errorf("reading the node's resolver: %w", err)
	}
	for _, ns := range nameservers(data) {
		s := normalizeServer(ns.server)
		if s == "127.0.0.53" || s == "127.0.0.54" {
			r.Stub = true
		}
		r.ResolvConf = appendNew(r.ResolvConf, s)
		addSource(r.Sources, s, fmt.Sprintf("/etc/resolv.conf:%d", ns.line))
	}

	var dns, fallback []located
	for _, file := range resolvedFiles(fsys) {
		data, _, err := fsys.ReadFile(file)
		if err != nil {
			continue // a drop-in masked with /dev/null, or unreadable: systemd skips it too
		}
		resolvedConf(data, file, &dns, &fallback)
	}
	for _, l := range dns {
		r.DNS = appendNew(r.DNS, l.server)
		addSource(r.Sources, l.server, l.where)
	}
	for _, l := range fallback {
		r.FallbackDNS = appendNew(r.FallbackDNS, l.server)
		addSource(r.FallbackSources, l.server, l.where)
	}
	if data, _, err := fsys.ReadFile(resolvedRuntime); err == nil {
		for _, ns := range nameservers(data) {
			s := normalizeServer(ns.server)
			r.Resolved = appendNew(r.Resolved, s)
			addSource(r.Sources, s, fmt.Sprintf("%s:%d", resolvedRuntime, ns.line))
		}
	} else if len(r.DNS) > 0 {
		r.Resolved = r.DNS
	} else {
		r.Resolved = r.FallbackDNS
	}
	return r, nil
}

// resolvedFiles lists resolved's configuration files (node paths) in the order systemd reads them.
func resolvedFiles(fsys hostfs.Root) []string {
	var files []string
	for _, f := range resolvedMain {
		if _, _, err := fsys.Stat(f); err == nil {
			files = append(files, f)
			break
		}
	}
	byName := map[string]string{}
	var names []string
	for _, dir := range resolvedDropins {
		matches, _ := fsys.Glob(path.Join(dir, "*.conf"))
		for _, m := range matches {
			name := path.Base(m)
			if _, seen := byName[name]; !seen {
				byName[name] = m
				names = append(names, name)
			}
		}
	}
	slices.Sort(names)
	for _, n := range names {
		files = append(files, byName[n])
	}
	return files
}

// located is a server and the "file:line" naming it.
type located struct{ server, where string }

type nameserver struct {
	server string
	line   int
}

func nameservers(data []byte) []nameserver {
	var out []nameserver
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			out = append(out, nameserver{fields[1], n})
		}
	}
	return out
}

// resolvedConf applies DNS= and FallbackDNS= of one resolved.conf-style file ([Resolve]
// section) to the lists: each assignment appends, an empty one resets.
func resolvedConf(data []byte, file string, dns, fallback *[]located) {
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
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
		var list *[]located
		switch strings.TrimSpace(k) {
		case "DNS":
			list = dns
		case "FallbackDNS":
			list = fallback
		default:
			continue
		}
		servers := strings.Fields(v)
		if len(servers) == 0 {
			*list = nil
			continue
		}
		for _, s := range servers {
			if s = normalizeServer(s); s != "" {
				*list = append(*list, located{s, fmt.Sprintf("%s:%d", file, n)})
			}
		}
	}
}

// normalizeServer drops what resolved accepts around an address: "IP#name", "IP:port",
// "[IPv6]:port", "IP%iface".
func normalizeServer(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '#'); i >= 0 {
		s = s[:i]
	}
	if h, _, err := net.SplitHostPort(s); err == nil {
		s = h
	}
	if i := strings.IndexByte(s, '%'); i >= 0 {
		s = s[:i]
	}
	return s
}

func appendNew(list []string, s string) []string {
	if s == "" || slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

func addSource(m map[string][]string, server, where string) {
	if !slices.Contains(m[server], where) {
		m[server] = append(m[server], where)
	}
}
