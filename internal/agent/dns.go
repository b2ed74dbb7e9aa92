package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/precache/precache/internal/doctor"
	"github.com/precache/precache/internal/hostfs"
)

// dnsObjects are what the API says of the cluster's DNS, as last read: the CoreDNS Service,
// and node-local DNS's ConfigMap (the addresses it binds, where it forwards names outside
// the cluster) — Kubespray's nodelocaldns or the NodeLocal DNSCache addon's node-local-dns.
// precache doctor reads the same objects, so the agent's metric and Node Event name the
// same chain as doctor's dns-loop check. (Doctor also reads node-local DNS's DaemonSet for
// its image; only the fix of a warning names it, and the agent reports failures.)
type dnsObjects struct {
	readAt time.Time
	// failed says a read failed for another reason than an absent object.
	failed bool

	service, serviceSource   string
	serviceIPs               []string
	corefile, corefileSource string
	// forwardUnknown says why node-local DNS's forwarding is not known (no ConfigMap).
	forwardUnknown string
}

// apply adds what was read to d, as doctor does: the Service, then the Corefile (whose bind
// addresses are node-local even when they are also the Service's).
func (o *dnsObjects) apply(d *doctor.ClusterDNS) {
	if len(o.serviceIPs) > 0 {
		d.AddService(o.serviceSource, o.serviceIPs...)
	}
	if o.corefileSource == "" {
		d.ForwardUnknown = o.forwardUnknown
		return
	}
	d.AddCorefile(o.corefileSource, o.corefile)
}

// readDNSObjects GETs the cluster's DNS objects in kube-system, from the API server's watch
// cache (resourceVersion=0). Each is optional: an absent one is normal (a cluster without
// node-local DNS); any other failure is reported with what could be read.
func readDNSObjects(ctx context.Context, kube kubernetes.Interface) (*dnsObjects, error) {
	o := &dnsObjects{readAt: time.Now()}
	cached := metav1.GetOptions{ResourceVersion: "0"}
	core := kube.CoreV1()
	var errs []error
	for _, name := range []string{"kube-dns", "coredns"} {
		svc, err := core.Services("kube-system").Get(ctx, name, cached)
		if err != nil {
			if !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("reading Service kube-system/%s: %w", name, err))
			}
			continue
		}
		o.service, o.serviceSource, o.serviceIPs = name, "Service kube-system/"+name, serviceIPs(svc)
		break
	}
	var whyNot []string
	for _, name := range []string{"nodelocaldns", "node-local-dns"} {
		cm, err := core.ConfigMaps("kube-system").Get(ctx, name, cached)
		if err != nil {
			if !apierrors.IsNotFound(err) {
				err = fmt.Errorf("reading ConfigMap kube-system/%s: %w", name, err)
				errs = append(errs, err)
				whyNot = append(whyNot, firstLine(err.Error()))
			}
			continue
		}
		o.corefile, o.corefileSource = cm.Data["Corefile"], "ConfigMap kube-system/"+name
		break
	}
	switch {
	case o.corefileSource != "":
	case len(whyNot) > 0:
		o.forwardUnknown = whyNot[0]
	default:
		o.forwardUnknown = "no nodelocaldns or node-local-dns ConfigMap in kube-system"
	}
	err := errors.Join(errs...)
	o.failed = err != nil
	return o, err
}

func serviceIPs(svc *corev1.Service) []string {
	if len(svc.Spec.ClusterIPs) > 0 {
		return svc.Spec.ClusterIPs
	}
	return []string{svc.Spec.ClusterIP}
}

// clusterDNS is what is known of the cluster's DNS: the node's files (the kubelet's
// clusterDNS and resolvConf, read each time: they are local), and the API's objects, read
// at the first check and then once per resync. A read that fails keeps the last one that
// did not, so an API outage does not change the verdict.
func (a *Agent) clusterDNS(ctx context.Context) doctor.ClusterDNS {
	root := hostfs.Root(a.cfg.Root)
	kubelet, _ := doctor.FindKubelet(root, a.cfg.KubeletConfig) // on error: the defaults, as doctor uses them
	d := doctor.NodeClusterDNS(root, kubelet)
	if a.cfg.Clients.Kube == nil {
		d.ForwardUnknown = "no API access"
		return d
	}
	a.mu.Lock()
	o := a.dns
	a.mu.Unlock()
	if o == nil || a.due(o.readAt) {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		next, err := readDNSObjects(rctx, a.cfg.Clients.Kube)
		if err != nil {
			a.log.Warn("reading the cluster's DNS objects", zap.Error(err))
		}
		if err == nil || o == nil || o.failed {
			o = next
		} else {
			kept := *o
			kept.readAt = next.readAt // try again at the next resync
			o = &kept
		}
		a.mu.Lock()
		a.dns = o
		a.mu.Unlock()
	}
	o.apply(&d)
	return d
}
