package monitoring

import (
	"os"
	"path/filepath"
	"testing"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// TestKustomization: `kustomize build deploy/monitoring` gives the PodMonitor, the
// PrometheusRule and the dashboard's ConfigMap (labelled for Grafana's sidecar, holding
// dashboard.json as it is), all in the agent's namespace.
func TestKustomization(t *testing.T) {
	t.Parallel()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), monitoringDir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", monitoringDir, err)
	}
	want := map[string]bool{"PodMonitor/precache": false, "PrometheusRule/precache": false, "ConfigMap/precache-dashboard": false}
	dashboardJSON, err := os.ReadFile(filepath.Join(monitoringDir, "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	ns := daemonSet(t).Namespace
	for _, r := range m.Resources() {
		id := r.GetKind() + "/" + r.GetName()
		if _, ok := want[id]; !ok {
			t.Errorf("unexpected %s", id)
			continue
		}
		want[id] = true
		if r.GetNamespace() != ns {
			t.Errorf("%s in namespace %q, the agent's is %q", id, r.GetNamespace(), ns)
		}
		if r.GetKind() == "ConfigMap" {
			if r.GetLabels()["grafana_dashboard"] != "1" {
				t.Errorf("%s labels %v: Grafana's sidecar looks for grafana_dashboard=1", id, r.GetLabels())
			}
			if r.GetDataMap()["dashboard.json"] != string(dashboardJSON) {
				t.Errorf("%s does not hold dashboard.json as it is", id)
			}
		}
	}
	for id, seen := range want {
		if !seen {
			t.Errorf("no %s", id)
		}
	}
}
