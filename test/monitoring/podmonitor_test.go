package monitoring

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/relabel"
	"go.yaml.in/yaml/v2"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8slabels "k8s.io/apimachinery/pkg/labels"
	sigsyaml "sigs.k8s.io/yaml"
)

var monitoringDir = filepath.Join(repoRoot, "deploy", "monitoring")

// readStrict decodes a manifest into the Prometheus Operator's own type, rejecting any
// field the operator does not know (a misspelt sourceLabels would otherwise be dropped).
func readStrict(t *testing.T, path string, into any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := sigsyaml.UnmarshalStrict(data, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func podMonitor(t *testing.T) *monitoringv1.PodMonitor {
	t.Helper()
	var pm monitoringv1.PodMonitor
	readStrict(t, filepath.Join(monitoringDir, "podmonitor.yaml"), &pm)
	return &pm
}

func daemonSet(t *testing.T) *appsv1.DaemonSet {
	t.Helper()
	var ds appsv1.DaemonSet
	readStrict(t, filepath.Join(repoRoot, "deploy", "base", "daemonset.yaml"), &ds)
	return &ds
}

// TestPodMonitorSelectsTheDaemonSet: the PodMonitor selects deploy/base's agent pods, in
// their namespace, on a port the agent's container declares, at the path it serves.
func TestPodMonitorSelectsTheDaemonSet(t *testing.T) {
	t.Parallel()
	pm, ds := podMonitor(t), daemonSet(t)
	if pm.APIVersion != "monitoring.coreos.com/v1" || pm.Kind != "PodMonitor" {
		t.Fatalf("%s/%s, want monitoring.coreos.com/v1 PodMonitor", pm.APIVersion, pm.Kind)
	}
	sel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	if sel.Empty() || !sel.Matches(k8slabels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("selector %s does not select the DaemonSet's pods %v", sel, ds.Spec.Template.Labels)
	}
	if pm.Namespace != ds.Namespace && !pm.Spec.NamespaceSelector.Any && !contains(pm.Spec.NamespaceSelector.MatchNames, ds.Namespace) {
		t.Errorf("PodMonitor in %s, pods in %s, no namespaceSelector", pm.Namespace, ds.Namespace)
	}
	if pm.Spec.JobLabel == "" || ds.Spec.Template.Labels[pm.Spec.JobLabel] != "precache" {
		t.Errorf("jobLabel %q: the pods' value is %q, the alerts select job=\"precache\"", pm.Spec.JobLabel, ds.Spec.Template.Labels[pm.Spec.JobLabel])
	}
	if len(pm.Spec.PodMetricsEndpoints) != 1 {
		t.Fatalf("%d endpoints, want 1", len(pm.Spec.PodMetricsEndpoints))
	}
	ep := pm.Spec.PodMetricsEndpoints[0]
	if ep.Port == nil {
		t.Fatal("the endpoint names no port")
	}
	found := false
	for _, c := range ds.Spec.Template.Spec.Containers {
		for _, p := range c.Ports {
			found = found || p.Name == *ep.Port
		}
	}
	if !found {
		t.Errorf("port %q is not a named port of the DaemonSet's containers", *ep.Port)
	}
	if ep.Path != "" && ep.Path != "/metrics" {
		t.Errorf("path %q: the agent serves /metrics", ep.Path)
	}
	// The relabeling gives every series its node.
	lset := targetLabels(t, pm, ds, "node-x", "precache-abcde", "10.1.2.3:9464")
	if lset.Get("node") != "node-x" || lset.Get("job") != "precache" {
		t.Errorf("target labels %s: want node=node-x, job=precache", lset)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// targetLabels are the labels Prometheus gives the agent pod's target under the PodMonitor:
// the ones the Prometheus Operator always sets (job from jobLabel, namespace, pod,
// container, endpoint, instance), then the PodMonitor's relabelings, applied by
// Prometheus' relabeling code to the pod's discovered labels.
func targetLabels(t *testing.T, pm *monitoringv1.PodMonitor, ds *appsv1.DaemonSet, node, pod, address string) labels.Labels {
	t.Helper()
	container := ds.Spec.Template.Spec.Containers[0].Name
	discovered := map[string]string{
		model.AddressLabel:                          address,
		"__meta_kubernetes_namespace":               ds.Namespace,
		"__meta_kubernetes_pod_name":                pod,
		"__meta_kubernetes_pod_node_name":           node,
		"__meta_kubernetes_pod_container_name":      container,
		"__meta_kubernetes_pod_container_port_name": *pm.Spec.PodMetricsEndpoints[0].Port,
	}
	for k, v := range ds.Spec.Template.Labels {
		discovered["__meta_kubernetes_pod_label_"+model.EscapeName(k, model.UnderscoreEscaping)] = v
	}
	b := labels.NewBuilder(labels.FromMap(discovered))
	b.Set("namespace", ds.Namespace)
	b.Set("pod", pod)
	b.Set("container", container)
	b.Set("endpoint", *pm.Spec.PodMetricsEndpoints[0].Port)
	b.Set("job", pm.Namespace+"/"+pm.Name)
	if pm.Spec.JobLabel != "" {
		b.Set("job", discovered["__meta_kubernetes_pod_label_"+model.EscapeName(pm.Spec.JobLabel, model.UnderscoreEscaping)])
	}
	var cfgs []*relabel.Config
	for _, rc := range pm.Spec.PodMetricsEndpoints[0].RelabelConfigs {
		// As the operator writes it into Prometheus' configuration.
		m := map[string]any{}
		if len(rc.SourceLabels) > 0 {
			var src []string
			for _, l := range rc.SourceLabels {
				src = append(src, string(l))
			}
			m["source_labels"] = src
		}
		if rc.Separator != nil {
			m["separator"] = *rc.Separator
		}
		if rc.TargetLabel != "" {
			m["target_label"] = rc.TargetLabel
		}
		if rc.Regex != "" {
			m["regex"] = rc.Regex
		}
		if rc.Replacement != nil {
			m["replacement"] = *rc.Replacement
		}
		if rc.Action != "" {
			m["action"] = strings.ToLower(rc.Action)
		}
		out, err := yaml.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var c relabel.Config
		if err := yaml.UnmarshalStrict(out, &c); err != nil {
			t.Fatalf("relabeling %s: %v", out, err)
		}
		if err := c.Validate(model.UTF8Validation); err != nil {
			t.Fatalf("relabeling %s: %v", out, err)
		}
		cfgs = append(cfgs, &c)
	}
	before := b.Labels()
	if !relabel.ProcessBuilder(b, cfgs...) {
		t.Fatalf("the PodMonitor's relabelings drop the agent's target %s", before)
	}
	lset := b.Labels()
	out := labels.NewBuilder(lset)
	if out.Get(model.InstanceLabel) == "" {
		out.Set(model.InstanceLabel, lset.Get(model.AddressLabel))
	}
	lset.Range(func(l labels.Label) {
		if strings.HasPrefix(l.Name, "__") {
			out.Del(l.Name)
		}
	})
	return out.Labels()
}
