package doctor

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/precache/precache/internal/hostfs"
	"github.com/precache/precache/internal/manifest"
)

// Node trees as Ubuntu and Kubespray lay them out. The Kubespray files are its templates
// at tag v2.31.0, rendered with the defaults of roles/kubespray_defaults/defaults/main/main.yml
// (enable_nodelocaldns: true, nodelocaldns_ip: 169.254.25.10, resolvconf_mode:
// host_resolvconf, upstream_dns_servers: [], dns_domain: cluster.local, the CoreDNS
// service 10.233.0.3) unless a test says otherwise.

// Ubuntu 22.04/24.04: /etc/resolv.conf is a link to systemd-resolved's stub file, and
// /etc/systemd/resolved.conf is all comments.
const (
	ubuntuStub = `# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).
# Do not edit.
nameserver 127.0.0.53
options edns0 trust-ad
search default.svc.cluster.local svc.cluster.local
`
	ubuntuResolvedConf = `#  This file is part of systemd.
[Resolve]
#DNS=
#FallbackDNS=
#Domains=
#DNSSEC=no
#Cache=no-negative
#DNSStubListener=yes
`
)

// resolvedRuntime is /run/systemd/resolve/resolv.conf as systemd-resolved writes it.
func resolvedRuntimeFile(servers ...string) string {
	s := "# This is /run/systemd/resolve/resolv.conf managed by man:systemd-resolved(8).\n# Do not edit.\n"
	for _, ip := range servers {
		s += "nameserver " + ip + "\n"
	}
	return s + "search default.svc.cluster.local svc.cluster.local\n"
}

// kubesprayDropin is roles/kubernetes/preinstall/templates/resolved.conf.j2 (v2.31.0) after
// dns_late, written to /etc/systemd/resolved.conf.d/kubespray.conf by
// roles/kubernetes/preinstall/tasks/0061-systemd-resolved.yml: DNS= is nodelocaldns_ip
// when enable_nodelocaldns, else the CoreDNS service; FallbackDNS= gets
// upstream_dns_servers + nameservers + cloud_resolver.
func kubesprayDropin(dns, fallback string) string {
	return "[Resolve]\nDNS=" + dns + "\nFallbackDNS=" + fallback + "\nDomains=default.svc.cluster.local svc.cluster.local\nDNSSEC=no\nCache=no-negative\n"
}

// kubesprayKubelet is roles/kubernetes/node/templates/kubelet-config.v1beta1.yaml.j2
// (v2.31.0), abridged, at /etc/kubernetes/kubelet-config.yaml: clusterDNS is
// nodelocaldns_ip when enable_nodelocaldns, else skydns_server; resolvConf is
// kube_resolv_conf, /run/systemd/resolve/resolv.conf on Ubuntu (roles/kubernetes/node/vars/ubuntu-*.yml).
func kubesprayKubelet(clusterDNS string, extra string) string {
	return `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
nodeStatusUpdateFrequency: "10s"
failSwapOn: true
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: /etc/kubernetes/ssl/ca.crt
authorization:
  mode: Webhook
staticPodPath: /etc/kubernetes/manifests
cgroupDriver: systemd
containerRuntimeEndpoint : unix:///var/run/containerd/containerd.sock
maxPods: 110
address: "0.0.0.0"
clusterDomain: cluster.local
clusterDNS:
- ` + clusterDNS + `
resolvConf: "/run/systemd/resolve/resolv.conf"
` + extra
}

// kubesprayCorefile is the nodelocaldns ConfigMap's Corefile,
// roles/kubernetes-apps/ansible/templates/nodelocaldns-config.yml.j2 (v2.31.0), with
// forwardTarget the CoreDNS service and upstreamForwardTarget upstream_dns_servers, or
// /etc/resolv.conf when that list is empty (roles/kubernetes-apps/ansible/tasks/main.yml).
func kubesprayCorefile(upstream string) string {
	return `cluster.local:53 {
    errors
    cache {
        success 9984 30
        denial 9984 5
    }
    reload
    loop
    bind 169.254.25.10
    forward . 10.233.0.3 {
        force_tcp
    }
    prometheus :9253
    health 169.254.25.10:9254
}
in-addr.arpa:53 {
    errors
    cache 30
    reload
    loop
    bind 169.254.25.10
    forward . 10.233.0.3 {
        force_tcp
    }
    prometheus :9253
}
ip6.arpa:53 {
    errors
    cache 30
    reload
    loop
    bind 169.254.25.10
    forward . 10.233.0.3 {
        force_tcp
    }
    prometheus :9253
}
.:53 {
    errors
    cache 30
    reload
    loop
    bind 169.254.25.10
    forward . ` + upstream + `

    prometheus :9253
}
`
}

// ubuntuKubespray is an Ubuntu node after Kubespray, with DNS= dns, FallbackDNS= fallback,
// the kubelet's clusterDNS and what systemd-resolved ends up using (runtime).
func ubuntuKubespray(dns, fallback, clusterDNS string, runtime ...string) map[string]string {
	return map[string]string{
		"etc/resolv.conf":                            "-> /run/systemd/resolve/stub-resolv.conf",
		"run/systemd/resolve/stub-resolv.conf":       ubuntuStub,
		"etc/systemd/resolved.conf":                  ubuntuResolvedConf,
		"etc/systemd/resolved.conf.d/kubespray.conf": kubesprayDropin(dns, fallback),
		"run/systemd/resolve/resolv.conf":            resolvedRuntimeFile(runtime...),
		"etc/kubernetes/kubelet-config.yaml":         kubesprayKubelet(clusterDNS, ""),
	}
}

// absent, as a value given to with, removes the file.
const absent = "\x00absent"

func with(base map[string]string, more map[string]string) map[string]string {
	out := maps.Clone(base)
	maps.Copy(out, more)
	maps.DeleteFunc(out, func(_, v string) bool { return v == absent })
	return out
}

// The shapes a node's DNS takes and what doctor makes of them, read from the node's files
// (and, where said, the nodelocaldns ConfigMap and the CoreDNS Service from the API).
func TestDNSLoopShapes(t *testing.T) {
	t.Parallel()
	nodeLocal := ubuntuKubespray("169.254.25.10", "", "169.254.25.10", "169.254.25.10")
	tests := []struct {
		name     string
		files    map[string]string
		corefile string // the nodelocaldns ConfigMap, "" when the API was not read
		service  string // the CoreDNS Service IP from the API, if read
		want     Status
		summary  []string
		evidence []string
		fix      []string
	}{
		{
			// The Kubespray default on Ubuntu. Before hostfs, the absolute link was followed
			// in the container and the check SKIPped; before the shapes, it blamed CoreDNS.
			name:     "Kubespray default: node-local DNS, upstream_dns_servers empty — it forwards back to itself",
			files:    nodeLocal,
			corefile: kubesprayCorefile("/etc/resolv.conf"),
			service:  "10.233.0.3",
			want:     Fail,
			summary:  []string{"only through node-local DNS (169.254.25.10, /etc/systemd/resolved.conf.d/kubespray.conf:2)", "back into the cluster (169.254.25.10 (node-local DNS))"},
			evidence: []string{
				"/etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf: nameserver 127.0.0.53, systemd-resolved's stub",
				"resolves through 169.254.25.10, node-local DNS (from /etc/systemd/resolved.conf.d/kubespray.conf:2, /run/systemd/resolve/resolv.conf:3)",
				"node-local DNS 169.254.25.10 (from kubelet clusterDNS, /etc/kubernetes/kubelet-config.yaml:20, ConfigMap kube-system/nodelocaldns)",
				"forwards names outside the cluster to /etc/resolv.conf (ConfigMap kube-system/nodelocaldns, Corefile line 44)",
				"the kubelet's resolvConf (dnsPolicy: Default), /run/systemd/resolve/resolv.conf: 169.254.25.10 (node-local DNS)",
				"CoreDNS service 10.233.0.3 (from Service kube-system/coredns)",
			},
			fix: []string{"upstream_dns_servers", "resolvconf_mode: none", "enable_nodelocaldns: false would make it worse", "FallbackDNS= does not help", "--dns-fallback"},
		},
		{
			name:     "node-local DNS with upstream_dns_servers: [192.0.2.53] — the pod and its image are the dependency; FallbackDNS= is ignored",
			files:    ubuntuKubespray("169.254.25.10", "192.0.2.53", "169.254.25.10", "169.254.25.10"),
			corefile: kubesprayCorefile("192.0.2.53"),
			want:     Warn,
			summary:  []string{"only through node-local DNS (169.254.25.10", "sends names outside the cluster to 192.0.2.53", "registry.k8s.io/dns/k8s-dns-node-cache"},
			evidence: []string{
				"FallbackDNS=192.0.2.53 (/etc/systemd/resolved.conf.d/kubespray.conf:3) is not used: systemd-resolved ignores FallbackDNS= while a DNS= server is set",
				"node-local DNS 169.254.25.10 is a hostNetwork pod on this node: it runs without calico-node",
			},
			fix: []string{"precache agent --image registry.k8s.io/dns/k8s-dns-node-cache", "resolvconf_mode: none", "FallbackDNS= does not help"},
		},
		{
			name:    "node-local DNS, no API: where it forwards is unknown, and its resolv.conf leads back — WARN saying so",
			files:   nodeLocal,
			want:    Warn,
			summary: []string{"could not be read", "without upstream_dns_servers it sends names back into the cluster"},
			evidence: []string{
				"where node-local DNS forwards names outside the cluster is unknown",
				"/run/systemd/resolve/resolv.conf: 169.254.25.10 (node-local DNS)",
			},
			fix: []string{"kubectl -n kube-system get configmap nodelocaldns", "set Kubespray's upstream_dns_servers", "--image registry.k8s.io/dns/k8s-dns-node-cache"},
		},
		{
			name: "node-local DNS, no API, the kubelet's resolvConf names a resolver outside the cluster",
			files: with(nodeLocal, map[string]string{
				"etc/kubernetes/kubelet-config.yaml": strings.Replace(kubesprayKubelet("169.254.25.10", ""), "/run/systemd/resolve/resolv.conf", "/etc/kubelet-resolv.conf", 1),
				"etc/kubelet-resolv.conf":            "nameserver 192.0.2.1\n",
			}),
			want:    Warn,
			summary: []string{"sends names outside the cluster to 192.0.2.1"},
		},
		{
			name:    "node-local DNS with the clusterDNS unknown: the well-known address still tells the shape",
			files:   with(nodeLocal, map[string]string{"etc/kubernetes/kubelet-config.yaml": "kind: KubeletConfiguration\n"}),
			want:    Warn,
			summary: []string{"node-local DNS (169.254.25.10"},
		},
		{
			name:    "enable_nodelocaldns: false — the CoreDNS service IP, reached over the pod network",
			files:   ubuntuKubespray("10.233.0.3", "", "10.233.0.3", "10.233.0.3"),
			want:    Fail,
			summary: []string{"the node's only resolver is the CoreDNS service (10.233.0.3, /etc/systemd/resolved.conf.d/kubespray.conf:2)", "without calico-node CoreDNS cannot answer"},
			fix:     []string{"enable_nodelocaldns: true", "upstream_dns_servers set", "resolvconf_mode: none", "FallbackDNS= does not help", "--dns-fallback"},
		},
		{
			name:     "enable_nodelocaldns: false with upstream_dns_servers: only FallbackDNS= gets them, which resolved ignores",
			files:    ubuntuKubespray("10.233.0.3", "8.8.8.8 8.8.4.4", "10.233.0.3", "10.233.0.3"),
			want:     Fail,
			evidence: []string{"FallbackDNS=8.8.8.8 8.8.4.4 (/etc/systemd/resolved.conf.d/kubespray.conf:3) is not used"},
		},
		{
			name: "a relative resolv.conf link and a per-link DHCP server after the CoreDNS service: WARN",
			files: with(ubuntuKubespray("10.233.0.3", "", "10.233.0.3", "10.233.0.3", "192.0.2.1"), map[string]string{
				"etc/resolv.conf": "-> ../run/systemd/resolve/stub-resolv.conf",
			}),
			want:     Warn,
			summary:  []string{"the CoreDNS service (10.233.0.3, /etc/systemd/resolved.conf.d/kubespray.conf:2) is asked before 192.0.2.1"},
			evidence: []string{"/etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf: nameserver 127.0.0.53"},
		},
		{
			name:  "node-local DNS asked before a per-link server: WARN about the pod",
			files: ubuntuKubespray("169.254.25.10", "", "169.254.25.10", "169.254.25.10", "192.0.2.1"),
			want:  Warn,
			fix:   []string{"--image registry.k8s.io/dns/k8s-dns-node-cache"},
		},
		{
			name: "a later drop-in resets DNS= and names an upstream: OK",
			files: with(ubuntuKubespray("10.233.0.3", "", "10.233.0.3"), map[string]string{
				"run/systemd/resolve/resolv.conf":                absent,
				"etc/systemd/resolved.conf.d/zz-upstream.conf":   "[Resolve]\nDNS=\nDNS=192.0.2.53\n",
				"usr/lib/systemd/resolved.conf.d/kubespray.conf": "[Resolve]\nDNS=10.233.0.3\n", // hidden by /etc's file of the same name
			}),
			want: OK,
		},
		{
			name: "the runtime file is what resolved uses: a stale DNS= in a file does not count",
			files: with(ubuntuKubespray("10.233.0.3", "", "10.233.0.3", "192.0.2.53"), map[string]string{
				"run/systemd/resolve/resolv.conf": resolvedRuntimeFile("192.0.2.53"),
			}),
			want: OK,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := hostfs.Root(writeTree(t, tt.files))
			r, err := ReadResolvers(string(root))
			if err != nil {
				t.Fatal(err)
			}
			k, err := FindKubelet(root, "")
			if err != nil {
				t.Fatal(err)
			}
			d := NodeClusterDNS(root, k)
			if tt.service != "" {
				d.AddService("Service kube-system/coredns", tt.service)
			}
			if tt.corefile != "" {
				d.AddCorefile("ConfigMap kube-system/nodelocaldns", tt.corefile)
			}
			got := Loop(r, d, []string{"--dns-fallback"})
			if got.Status != tt.want {
				t.Fatalf("status %s, want %s:\n%s", got.Status, tt.want, show(got))
			}
			for _, s := range tt.summary {
				if !strings.Contains(got.Summary, s) {
					t.Errorf("summary lacks %q:\n%s", s, show(got))
				}
			}
			for _, e := range tt.evidence {
				if !strings.Contains(strings.Join(got.Evidence, "\n"), e) {
					t.Errorf("evidence lacks %q:\n%s", e, show(got))
				}
			}
			for _, f := range tt.fix {
				if !strings.Contains(got.Fix, f) {
					t.Errorf("fix lacks %q:\n%s", f, show(got))
				}
			}
		})
	}
}

func show(r Result) string {
	return string(r.Status) + ": " + r.Summary + "\n  " + strings.Join(r.Evidence, "\n  ") + "\n  fix: " + r.Fix
}

// DNSLoop is what the agent calls with only the cluster DNS IPs.
func TestDNSLoop(t *testing.T) {
	t.Parallel()
	stub := "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n"
	oldResolved := "# Kubespray managed\n[Resolve]\nDNS=10.233.0.3\nDomains=default.svc.cluster.local svc.cluster.local\n"
	tests := []struct {
		name       string
		files      map[string]string
		clusterDNS []string
		want       Status
		evidence   string
	}{
		{"resolved.conf DNS=cluster IP only", map[string]string{
			"etc/resolv.conf":                 stub,
			"etc/systemd/resolved.conf":       oldResolved,
			"run/systemd/resolve/resolv.conf": "nameserver 10.233.0.3\n",
		}, []string{"10.233.0.3"}, Fail, "10.233.0.3, the CoreDNS service (from /etc/systemd/resolved.conf:3, /run/systemd/resolve/resolv.conf:1)"},
		{"drop-in adds an upstream after the cluster IP", map[string]string{
			"etc/resolv.conf":                           stub,
			"etc/systemd/resolved.conf":                 oldResolved,
			"etc/systemd/resolved.conf.d/upstream.conf": "[Resolve]\nDNS=192.0.2.53\n",
		}, []string{"10.233.0.3"}, Warn, "192.0.2.53, outside the cluster (from /etc/systemd/resolved.conf.d/upstream.conf:2)"},
		{"upstream first", map[string]string{
			"etc/resolv.conf":           stub,
			"etc/systemd/resolved.conf": "[Resolve]\nDNS=192.0.2.53 10.233.0.3\n",
		}, []string{"10.233.0.3"}, OK, ""},
		{"plain resolv.conf, only the cluster IP", map[string]string{
			"etc/resolv.conf": "search default.svc.cluster.local\nnameserver 10.233.0.3\n",
		}, []string{"10.233.0.3"}, Fail, "/etc/resolv.conf resolves through 10.233.0.3"},
		{"plain resolv.conf, no cluster IP", map[string]string{
			"etc/resolv.conf": "nameserver 192.0.2.1\nnameserver 192.0.2.2\n",
		}, []string{"10.233.0.3"}, OK, ""},
		{"resolved, port and SNI forms", map[string]string{
			"etc/resolv.conf":           stub,
			"etc/systemd/resolved.conf": "[Resolve]\nDNS=10.233.0.3:53#cluster.local\n",
		}, []string{"10.233.0.3"}, Fail, ""},
		{"a DNS= outside [Resolve] does not count", map[string]string{
			"etc/resolv.conf":           stub,
			"etc/systemd/resolved.conf": "[Other]\nDNS=10.233.0.3\n[Resolve]\nDNS=192.0.2.53\n",
		}, []string{"10.233.0.3"}, OK, ""},
		{"FallbackDNS= alone is what resolved uses", map[string]string{
			"etc/resolv.conf":           stub,
			"etc/systemd/resolved.conf": "[Resolve]\nFallbackDNS=192.0.2.53\n",
		}, []string{"10.233.0.3"}, OK, ""},
		{"a link-local clusterDNS is node-local DNS", map[string]string{
			"etc/resolv.conf": "nameserver 169.254.25.10\n",
		}, []string{"169.254.25.10"}, Warn, "node-local DNS"},
		{"cluster DNS unknown", map[string]string{"etc/resolv.conf": "nameserver 10.233.0.3\n"}, nil, Skip, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, err := ReadResolvers(writeTree(t, tt.files))
			if err != nil {
				t.Fatal(err)
			}
			got := DNSLoop(r, tt.clusterDNS, []string{"--dns-fallback"})
			if got.Status != tt.want {
				t.Fatalf("status %s, want %s:\n%s", got.Status, tt.want, show(got))
			}
			if tt.evidence != "" && !strings.Contains(strings.Join(got.Evidence, "\n"), tt.evidence) {
				t.Errorf("evidence lacks %q:\n%s", tt.evidence, show(got))
			}
			if got.Status == Fail && (!strings.Contains(got.Fix, "upstream_dns_servers") || !strings.Contains(got.Fix, "--dns-fallback")) {
				t.Errorf("fix %q should name the Kubespray setting and precache's remedies", got.Fix)
			}
		})
	}
}

func TestReadResolversUnderRoot(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		files   map[string]string
		wantErr string
		stub    bool
		path    string
	}{
		{name: "no /etc/resolv.conf", files: map[string]string{}, wantErr: "/etc/resolv.conf: no such file"},
		{name: "absolute link into the node's /run", files: map[string]string{
			"etc/resolv.conf": "-> /run/systemd/resolve/stub-resolv.conf", "run/systemd/resolve/stub-resolv.conf": ubuntuStub,
		}, stub: true, path: "/etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf"},
		{name: "a dangling absolute link: the node's /run is not there", files: map[string]string{
			"etc/resolv.conf": "-> /run/systemd/resolve/stub-resolv.conf",
		}, wantErr: "/etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf: no such file"},
		{name: "a link climbing out of the root stays in it", files: map[string]string{
			"etc/resolv.conf": "-> ../../../../../../../../etc/hostname-not-here",
		}, wantErr: "/etc/resolv.conf -> /etc/hostname-not-here: no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := writeTree(t, tt.files)
			r, err := ReadResolvers(root)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || strings.Contains(err.Error(), root) {
					t.Fatalf("err %v, want one naming %q (node paths, not %s)", err, tt.wantErr, root)
				}
				return
			}
			if err != nil || r.Stub != tt.stub || r.ResolvConfPath != tt.path {
				t.Fatalf("%+v, %v", r, err)
			}
		})
	}
}

func TestAddCorefile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		corefile  string
		nodeLocal []string
		forward   []string
		line      string
	}{
		{"Kubespray v2.31.0, upstream_dns_servers empty", kubesprayCorefile("/etc/resolv.conf"), []string{"169.254.25.10"}, []string{"/etc/resolv.conf"}, "line 44"},
		{"Kubespray v2.31.0, upstream_dns_servers set, dns_upstream_forward_extra_opts", strings.Replace(kubesprayCorefile("8.8.8.8 8.8.4.4"), "8.8.4.4\n", "8.8.4.4 {\n          policy sequential\n        }\n", 1),
			[]string{"169.254.25.10"}, []string{"8.8.8.8", "8.8.4.4"}, "line 44"},
		{
			// kubernetes/kubernetes cluster/addons/dns/nodelocaldns/nodelocaldns.yaml, with the
			// local IP and the kube-dns IP filled in as its README says; node-cache fills in
			// __PILLAR__UPSTREAM__SERVERS__ from the pod's /etc/resolv.conf.
			"NodeLocal DNSCache addon", `cluster.local:53 {
    errors
    bind 169.254.20.10 10.96.0.10
    forward . __PILLAR__CLUSTER__DNS__ {
            force_tcp
    }
}
.:53 {
    errors
    cache 30
    bind 169.254.20.10 10.96.0.10
    forward . __PILLAR__UPSTREAM__SERVERS__
}
`, []string{"169.254.20.10", "10.96.0.10"}, []string{"/etc/resolv.conf"}, "line 12"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var d ClusterDNS
			d.AddService("Service kube-system/kube-dns", "10.96.0.10")
			d.AddCorefile("ConfigMap", tt.corefile)
			if !slices.Equal(d.NodeLocal, tt.nodeLocal) || !slices.Equal(d.Forward, tt.forward) || !strings.Contains(d.ForwardSource, tt.line) {
				t.Fatalf("node-local %v forward %v (%s)", d.NodeLocal, d.Forward, d.ForwardSource)
			}
			if slices.Contains(d.Service, "10.96.0.10") && slices.Contains(d.NodeLocal, "10.96.0.10") {
				t.Errorf("10.96.0.10 both service and node-local")
			}
		})
	}
}

// TestDNSPath: which parts of the recovery set the node's name resolution depends on, for
// Kubespray's two shapes (nodelocaldns on: resolved's DNS=169.254.25.10; off: the CoreDNS
// service IP 10.233.0.3) and a node with a resolver of its own.
func TestDNSPath(t *testing.T) {
	t.Parallel()
	d := ClusterDNS{Service: []string{"10.233.0.3"}, NodeLocal: []string{"169.254.25.10"}}
	tests := []struct {
		name    string
		servers []string
		forward []string
		want    []manifest.Part
	}{
		{"the CoreDNS service only", []string{"10.233.0.3"}, nil,
			[]manifest.Part{manifest.PartCoreDNS, manifest.PartKubeProxy, manifest.PartCalico, manifest.PartAPIServerProxy, manifest.PartSandbox}},
		{"node-local DNS forwarding outside the cluster", []string{"169.254.25.10"}, []string{"192.0.2.53"},
			[]manifest.Part{manifest.PartNodeLocalDNS, manifest.PartSandbox}},
		{"node-local DNS forwarding back into the cluster", []string{"169.254.25.10"}, []string{"10.233.0.3"},
			[]manifest.Part{manifest.PartNodeLocalDNS, manifest.PartCoreDNS, manifest.PartKubeProxy, manifest.PartCalico, manifest.PartAPIServerProxy, manifest.PartSandbox}},
		{"a resolver of the node's own as well", []string{"10.233.0.3", "192.0.2.53"}, nil, nil},
		{"no resolver", nil, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := Resolvers{ResolvConfPath: "/etc/resolv.conf", ResolvConf: tt.servers, Sources: map[string][]string{}}
			dd := d
			dd.Forward, dd.ForwardSource = tt.forward, "ConfigMap kube-system/nodelocaldns"
			got := DNSPath(r, dd, Loop(r, dd, nil))
			if !slices.Equal(got, tt.want) {
				t.Errorf("DNSPath = %v, want %v", got, tt.want)
			}
		})
	}
}
