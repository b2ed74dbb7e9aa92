package doctor

import (
	"bufio"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/precache/precache/internal/hostfs"
	"github.com/precache/precache/internal/manifest"
)

// WellKnownNodeLocal are the addresses node-local DNS caches listen on by convention:
// Kubespray's nodelocaldns_ip default and the one Kubernetes' NodeLocal DNSCache
// documentation uses. A cluster's Service IPs are never link-local.
var WellKnownNodeLocal = []string{"169.254.25.10", "169.254.20.10"}

// NodeLocalImage is the image Kubespray's nodelocaldns DaemonSet runs (nodelocaldns_image_repo).
const NodeLocalImage = "registry.k8s.io/dns/k8s-dns-node-cache"

// ClusterDNS is what is known of the cluster's DNS: which addresses are the CoreDNS
// service and which are node-local DNS, and where node-local DNS sends the rest.
type ClusterDNS struct {
	// Service are the CoreDNS (kube-dns) Service IPs. They are reached through kube-proxy's
	// rules to CoreDNS pods on the pod network: without calico-node, no answer.
	Service []string
	// NodeLocal are node-local DNS addresses: Kubespray's nodelocaldns (or Kubernetes'
	// NodeLocal DNSCache), a hostNetwork DaemonSet that runs without the CNI.
	NodeLocal []string
	// Sources says where each address was learnt.
	Sources map[string][]string

	// Forward is where node-local DNS sends names outside the cluster: the forward targets
	// of its Corefile's ".:53" block. nil: unknown (ForwardUnknown says why). A path
	// ("/etc/resolv.conf") means the pod's resolv.conf, which the kubelet fills from its
	// resolvConf because the pod runs with dnsPolicy: Default.
	Forward        []string
	ForwardSource  string
	ForwardUnknown string
	// Image is the image node-local DNS runs, and where that was read.
	Image, ImageSource string

	// PodResolvConf is the kubelet's resolvConf as resolved on the node, and its nameservers:
	// the /etc/resolv.conf of every dnsPolicy: Default pod, node-local DNS among them.
	PodResolvConf        string
	PodResolvConfServers []string
	PodResolvConfErr     error
}

// AddService records CoreDNS Service IPs.
func (d *ClusterDNS) AddService(source string, ips ...string) {
	for _, ip := range ips {
		if ip == "" || ip == "None" || slices.Contains(d.NodeLocal, ip) {
			continue
		}
		d.Service = appendNew(d.Service, ip)
		d.source(ip, source)
	}
}

// AddNodeLocal records node-local DNS addresses (and takes them out of Service: NodeLocal
// DNSCache can also answer on the kube-dns Service IP).
func (d *ClusterDNS) AddNodeLocal(source string, ips ...string) {
	for _, ip := range ips {
		if ip == "" {
			continue
		}
		d.Service = slices.DeleteFunc(d.Service, func(s string) bool { return s == ip })
		d.NodeLocal = appendNew(d.NodeLocal, ip)
		d.source(ip, source)
	}
}

// AddClusterDNS records the kubelet's clusterDNS: a link-local address there is node-local
// DNS (Kubespray sets clusterDNS to nodelocaldns_ip when enable_nodelocaldns is on), any
// other the CoreDNS service.
func (d *ClusterDNS) AddClusterDNS(source string, ips ...string) {
	for _, ip := range ips {
		if a := net.ParseIP(ip); a != nil && a.IsLinkLocalUnicast() {
			d.AddNodeLocal(source, ip)
		} else {
			d.AddService(source, ip)
		}
	}
}

// AddCorefile reads node-local DNS's Corefile (the nodelocaldns ConfigMap): the addresses
// it binds are node-local, and the forward of its ".:53" block is where names outside
// the cluster go. source names the ConfigMap.
func (d *ClusterDNS) AddCorefile(source, corefile string) {
	block, depth := "", 0
	sc := bufio.NewScanner(strings.NewReader(corefile))
	for n := 1; sc.Scan(); n++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		if depth == 0 && fields[len(fields)-1] == "{" {
			block = strings.Join(fields[:len(fields)-1], " ")
		}
		if depth == 1 {
			switch {
			case fields[0] == "bind":
				for _, ip := range fields[1:] {
					if net.ParseIP(ip) != nil {
						d.AddNodeLocal(source, ip)
					}
				}
			case fields[0] == "forward" && len(fields) > 2 && fields[1] == "." && isRootZone(block):
				d.Forward = nil
				for _, t := range fields[2:] {
					if t == "{" {
						break
					}
					if strings.HasPrefix(t, "__PILLAR__") { // NodeLocal DNSCache's template: node-cache fills in the pod's resolv.conf
						t = "/etc/resolv.conf"
					}
					d.Forward = append(d.Forward, t)
				}
				d.ForwardSource = fmt.Sprintf("%s, Corefile line %d", source, n)
			}
		}
		depth += strings.Count(sc.Text(), "{") - strings.Count(sc.Text(), "}")
	}
}

func isRootZone(block string) bool {
	for _, z := range strings.Fields(block) {
		z = strings.TrimPrefix(z, "dns://")
		if z == "." || strings.HasPrefix(z, ".:") {
			return true
		}
	}
	return false
}

// ReadPodResolvConf reads the kubelet's resolvConf under root (path "" is the kubelet's
// default, /etc/resolv.conf).
func (d *ClusterDNS) ReadPodResolvConf(root hostfs.Root, path string) {
	if path == "" {
		path = "/etc/resolv.conf"
	}
	data, p, err := root.ReadFile(path)
	d.PodResolvConf, d.PodResolvConfErr = p.String(), err
	for _, ns := range nameservers(data) {
		d.PodResolvConfServers = appendNew(d.PodResolvConfServers, normalizeServer(ns.server))
	}
}

func (d *ClusterDNS) source(ip, source string) {
	if d.Sources == nil {
		d.Sources = map[string][]string{}
	}
	addSource(d.Sources, ip, source)
}

type role int

const (
	outside role = iota
	nodeLocal
	service
	loopback // the node's own resolver, seen from a hostNetwork pod
)

func (d ClusterDNS) role(ip string) role {
	switch {
	case slices.Contains(d.NodeLocal, ip) || slices.Contains(WellKnownNodeLocal, ip):
		return nodeLocal
	case slices.Contains(d.Service, ip):
		return service
	}
	if a := net.ParseIP(ip); a != nil && a.IsLoopback() {
		return loopback
	}
	return outside
}

func (d ClusterDNS) describe(ip string) string {
	switch d.role(ip) {
	case nodeLocal:
		return "node-local DNS"
	case service:
		return "the CoreDNS service"
	case loopback:
		return "the node's own resolver"
	}
	return "outside the cluster"
}

// DNSLoop checks whether name resolution on the node depends on the cluster, given only
// the cluster DNS IPs (the kubelet's clusterDNS or the kube-dns Service): link-local ones
// are taken as node-local DNS, the rest as the CoreDNS service.
func DNSLoop(r Resolvers, clusterDNS []string, remedies []string) Result {
	var d ClusterDNS
	d.AddClusterDNS("cluster DNS", clusterDNS...)
	return Loop(r, d, remedies)
}

// The Kubespray settings that break each shape of the loop (roles/kubespray_defaults,
// roles/kubernetes/preinstall/templates/resolved.conf.j2).
const (
	fallbackNote = "FallbackDNS= does not help: systemd-resolved ignores it while DNS= is set, " +
		"and Kubespray writes upstream_dns_servers (and nameservers) only there"
	fixService = "give the node a resolver that does not need the pod network. Kubespray: " +
		"enable_nodelocaldns: true (its default) with upstream_dns_servers set — node-local DNS runs on the host network, " +
		"without calico-node, and sends names outside the cluster straight to those servers; " +
		"or resolvconf_mode: none, which leaves the node's own resolver alone. " + fallbackNote
	fixNodeLocalLoop = "make node-local DNS reach a resolver outside the cluster. Kubespray: set upstream_dns_servers " +
		"(the nodelocaldns ConfigMap's \".:53\" block then forwards there, over the host network); " +
		"or resolvconf_mode: none, which leaves the node's own resolver alone; " +
		"enable_nodelocaldns: false would make it worse (the node would resolve through the CoreDNS service, over the pod network). " + fallbackNote
	fixNodeLocalUnknown = "check where node-local DNS forwards names outside the cluster (kubectl -n kube-system get configmap nodelocaldns: " +
		"the \".:53\" block's forward); if it is /etc/resolv.conf, set Kubespray's upstream_dns_servers. Keep its image on the node with Calico's " +
		"(precache agent --image %s, PRECACHE_IMAGES), or give the node a resolver of its own: Kubespray's resolvconf_mode: none. " + fallbackNote
	fixNodeLocalPod = "keep node-local DNS's image on the node with Calico's (precache agent --image %s, PRECACHE_IMAGES), " +
		"or give the node a resolver of its own: Kubespray's resolvconf_mode: none leaves the node's resolver alone. " + fallbackNote
)

// Loop checks whether name resolution on the node depends on the cluster, and through
// what: the CoreDNS service IP (CoreDNS → the pod network → calico-node) or node-local
// DNS (its pod and image on this node, and where it forwards names outside the cluster).
func Loop(r Resolvers, d ClusterDNS, remedies []string) Result {
	res := Result{Check: "dns-loop"}
	effective, via := r.Effective()
	withRemedies := func(fix string) string {
		if len(remedies) > 0 {
			fix += "; precache's own remedies: " + strings.Join(remedies, ", ")
		}
		return fix
	}

	if r.Stub {
		res.Evidence = append(res.Evidence, fmt.Sprintf("%s: nameserver %s, systemd-resolved's stub", r.ResolvConfPath, strings.Join(r.ResolvConf, ", ")))
	}
	for _, s := range effective {
		res.Evidence = append(res.Evidence, fmt.Sprintf("%s resolves through %s, %s (from %s)", via, s, d.describe(s), strings.Join(r.Sources[s], ", ")))
	}
	if r.Stub && r.FallbackIgnored() {
		var where []string
		for _, s := range r.FallbackDNS {
			where = appendNewAll(where, r.FallbackSources[s])
		}
		res.Evidence = append(res.Evidence, fmt.Sprintf("FallbackDNS=%s (%s) is not used: systemd-resolved ignores FallbackDNS= while a DNS= server is set",
			strings.Join(r.FallbackDNS, " "), strings.Join(where, ", ")))
	}
	for _, ip := range d.Service {
		res.Evidence = append(res.Evidence, fmt.Sprintf("CoreDNS service %s (from %s)", ip, strings.Join(d.Sources[ip], ", ")))
	}
	for _, ip := range d.NodeLocal {
		res.Evidence = append(res.Evidence, fmt.Sprintf("node-local DNS %s (from %s)", ip, strings.Join(d.Sources[ip], ", ")))
	}

	var cluster, other []string
	hasNodeLocal := false
	for _, s := range effective {
		switch d.role(s) {
		case nodeLocal:
			hasNodeLocal = true
			cluster = append(cluster, s)
		case service:
			cluster = append(cluster, s)
		default:
			other = append(other, s)
		}
	}
	if len(d.Service)+len(d.NodeLocal) == 0 && len(cluster) == 0 {
		res.Status, res.Summary = Skip, "the cluster DNS service IP is unknown (no API access and no kubelet clusterDNS)"
		return res
	}
	first := func(ip string) string { // "169.254.25.10, /etc/systemd/resolved.conf.d/kubespray.conf:2"
		if src := r.Sources[ip]; len(src) > 0 {
			return ip + ", " + src[0]
		}
		return ip
	}

	switch {
	case len(effective) == 0:
		res.Status, res.Summary = Warn, "no nameserver configured"
	case len(cluster) == 0:
		res.Status, res.Summary = OK, "the node resolves names without the cluster's DNS"
	case len(other) > 0 && slices.Index(effective, other[0]) < slices.Index(effective, cluster[0]):
		res.Status, res.Summary = OK, fmt.Sprintf("a resolver outside the cluster (%s) comes first", other[0])
	case len(other) > 0:
		res.Status = Warn
		res.Summary = fmt.Sprintf("%s (%s) is asked before %s: while it does not answer, every lookup first waits for it to time out",
			d.describe(cluster[0]), first(cluster[0]), other[0])
		if d.role(cluster[0]) == nodeLocal {
			res.Fix = withRemedies(fmt.Sprintf(fixNodeLocalPod, d.image()))
		} else {
			res.Fix = withRemedies(fixService)
		}
	case !hasNodeLocal:
		res.Status = Fail
		res.Summary = fmt.Sprintf("the node's only resolver is the CoreDNS service (%s), reached over the pod network: "+
			"without calico-node CoreDNS cannot answer, so if calico-node is lost its image cannot be pulled and the node cannot recover",
			first(cluster[0]))
		res.Fix = withRemedies(fixService)
	default:
		switch reaches := nodeLocalVerdict(&res, d, cluster, first); {
		case res.Status == Fail:
			res.Fix = withRemedies(fixNodeLocalLoop)
		case reaches:
			res.Fix = withRemedies(fmt.Sprintf(fixNodeLocalPod, d.image()))
		default:
			res.Fix = withRemedies(fmt.Sprintf(fixNodeLocalUnknown, d.image()))
		}
	}
	return res
}

// clusterPath are the parts of the recovery set the CoreDNS service needs to answer the
// node: CoreDNS itself, kube-proxy for the service IP, calico-node for the pod network
// (which reaches the API server through the API server proxy on Kubespray's workers), and
// the sandbox every pod starts in.
var clusterPath = []manifest.Part{manifest.PartCoreDNS, manifest.PartKubeProxy, manifest.PartCalico, manifest.PartAPIServerProxy, manifest.PartSandbox}

// DNSPath says which parts of the recovery set the node's name resolution depends on, as
// Loop sees it (loop is Loop's result for r and d): none when a resolver outside the
// cluster is configured; node-local DNS and the sandbox when node-local DNS answers the
// node and forwards elsewhere; the cluster's path as well when it forwards back into the
// cluster (Loop's FAIL); the cluster's path when the CoreDNS service is the only resolver.
func DNSPath(r Resolvers, d ClusterDNS, loop Result) []manifest.Part {
	effective, _ := r.Effective()
	hasNodeLocal, hasService := false, false
	for _, s := range effective {
		switch d.role(s) {
		case nodeLocal:
			hasNodeLocal = true
		case service:
			hasService = true
		default:
			return nil // names resolve without the cluster, if more slowly
		}
	}
	switch {
	case hasNodeLocal && loop.Status == Fail:
		return append([]manifest.Part{manifest.PartNodeLocalDNS}, clusterPath...)
	case hasNodeLocal:
		return []manifest.Part{manifest.PartNodeLocalDNS, manifest.PartSandbox}
	case hasService:
		return slices.Clone(clusterPath)
	}
	return nil
}

// nodeLocalVerdict: the node resolves only through the cluster, node-local DNS among it.
// It depends on the node-local DNS pod (and its image) on this node, and on where that
// pod sends names outside the cluster. It reports whether that is known to reach a
// resolver outside the cluster.
func nodeLocalVerdict(res *Result, d ClusterDNS, cluster []string, first func(string) string) bool {
	var nl string
	for _, s := range cluster {
		if d.role(s) == nodeLocal {
			nl = s
			break
		}
	}
	img := d.image()
	if d.ImageSource != "" {
		img += " (" + d.ImageSource + ")"
	}
	res.Evidence = append(res.Evidence, fmt.Sprintf("node-local DNS %s is a hostNetwork pod on this node: it runs without calico-node, from the image %s", nl, img))

	// Where names outside the cluster go.
	var targets []string
	known := d.Forward != nil
	viaResolvConf := !known
	if known {
		res.Evidence = append(res.Evidence, fmt.Sprintf("node-local DNS forwards names outside the cluster to %s (%s)", strings.Join(d.Forward, " "), d.ForwardSource))
		for _, t := range d.Forward {
			if strings.HasPrefix(t, "/") {
				viaResolvConf = true
				continue
			}
			targets = appendNew(targets, forwardHost(t))
		}
	} else {
		why := d.ForwardUnknown
		if why == "" {
			why = "its ConfigMap was not read"
		}
		res.Evidence = append(res.Evidence, fmt.Sprintf("where node-local DNS forwards names outside the cluster is unknown (%s): "+
			"to upstream_dns_servers when they are set, else to its own /etc/resolv.conf (Kubespray's default: upstream_dns_servers: [])", why))
	}
	resolvConfKnown := true
	if viaResolvConf {
		switch {
		case d.PodResolvConf == "" && d.PodResolvConfErr == nil:
			resolvConfKnown = false
			res.Evidence = append(res.Evidence, "its /etc/resolv.conf is the kubelet's resolvConf, which was not read")
		case d.PodResolvConfErr != nil:
			resolvConfKnown = false
			res.Evidence = append(res.Evidence, fmt.Sprintf("its /etc/resolv.conf is the kubelet's resolvConf, not readable: %v", d.PodResolvConfErr))
		default:
			var desc []string
			for _, s := range d.PodResolvConfServers {
				desc = append(desc, s+" ("+d.describe(s)+")")
				targets = appendNew(targets, s)
			}
			if len(desc) == 0 {
				desc = []string{"no nameserver"}
			}
			res.Evidence = append(res.Evidence, fmt.Sprintf("its /etc/resolv.conf is the kubelet's resolvConf (dnsPolicy: Default), %s: %s", d.PodResolvConf, strings.Join(desc, ", ")))
		}
	}
	var out, back []string
	for _, t := range targets {
		if d.role(t) == outside {
			out = append(out, t)
		} else {
			back = append(back, t)
		}
	}

	switch {
	case len(out) > 0:
		res.Status = Warn
		res.Summary = fmt.Sprintf("the node resolves names only through node-local DNS (%s): the pod on this node, which sends names outside the cluster to %s. "+
			"It runs without calico-node, but if it is lost, nothing on the node resolves the registry: its image (%s) must stay on the node too",
			first(nl), strings.Join(out, ", "), d.image())
		return true
	case known && resolvConfKnown:
		res.Status = Fail
		dest := "nowhere"
		if len(back) > 0 {
			var desc []string
			for _, b := range back {
				desc = append(desc, b+" ("+d.describe(b)+")")
			}
			dest = strings.Join(desc, ", ")
		}
		res.Summary = fmt.Sprintf("the node resolves names only through node-local DNS (%s), and node-local DNS sends names outside the cluster back into the cluster (%s): "+
			"no resolver outside the cluster is reached, so if calico-node is lost its image cannot be pulled", first(nl), dest)
	default:
		res.Status = Warn
		res.Summary = fmt.Sprintf("the node resolves names only through node-local DNS (%s), the pod on this node; whether it reaches a resolver outside the cluster "+
			"could not be read — without upstream_dns_servers it sends names back into the cluster. Its image (%s) must stay on the node too", first(nl), d.image())
	}
	return false
}

// forwardHost is the address of a CoreDNS forward target ("dns://1.1.1.1:53", "tls://…").
func forwardHost(t string) string {
	if i := strings.Index(t, "://"); i >= 0 {
		t = t[i+3:]
	}
	return normalizeServer(t)
}

func (d ClusterDNS) image() string {
	if d.Image != "" {
		return d.Image
	}
	return NodeLocalImage
}

func appendNewAll(list, more []string) []string {
	for _, s := range more {
		list = appendNew(list, s)
	}
	return list
}

// NodeClusterDNS is what the node's files say of the cluster's DNS: the kubelet's
// clusterDNS, and its resolvConf (where node-local DNS sends names outside the cluster
// when no upstream servers are set).
func NodeClusterDNS(root hostfs.Root, k Kubelet) ClusterDNS {
	var d ClusterDNS
	d.AddClusterDNS("kubelet clusterDNS, "+k.Where("clusterDNS"), k.ClusterDNS...)
	if k.ResolvConf == "" {
		d.PodResolvConf = `the kubelet's resolvConf: ""`
		return d
	}
	d.ReadPodResolvConf(root, k.ResolvConf)
	return d
}
