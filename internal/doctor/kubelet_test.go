package doctor

import (
	"strings"
	"testing"

	"github.com/precache/precache/internal/hostfs"
)

func TestFindKubelet(t *testing.T) {
	t.Parallel()
	kubeadm := "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nclusterDNS:\n- 10.96.0.10\n"
	tests := []struct {
		name     string
		files    map[string]string
		explicit string
		dns      string
		path     string
		err      string
	}{
		{name: "kubeadm", files: map[string]string{"var/lib/kubelet/config.yaml": kubeadm}, dns: "10.96.0.10", path: "/var/lib/kubelet/config.yaml"},
		{name: "Kubespray", files: map[string]string{"etc/kubernetes/kubelet-config.yaml": kubesprayKubelet("169.254.25.10", "")}, dns: "169.254.25.10", path: "/etc/kubernetes/kubelet-config.yaml"},
		{name: "a link to the real file", files: map[string]string{"var/lib/kubelet/config.yaml": "-> /etc/kubernetes/kubelet-config.yaml", "etc/kubernetes/kubelet-config.yaml": kubeadm},
			dns: "10.96.0.10", path: "/var/lib/kubelet/config.yaml -> /etc/kubernetes/kubelet-config.yaml"},
		{name: "explicit", files: map[string]string{"srv/kubelet.yaml": kubeadm, "var/lib/kubelet/config.yaml": "clusterDNS: [192.0.2.1]\n"}, explicit: "/srv/kubelet.yaml", dns: "10.96.0.10", path: "/srv/kubelet.yaml"},
		{name: "none", files: map[string]string{}, err: "no kubelet config file at /var/lib/kubelet/config.yaml or /etc/kubernetes/kubelet-config.yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			k, err := FindKubelet(hostfs.Root(writeTree(t, tt.files)), tt.explicit)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || k.ImageGCHighThresholdPercent != 85 {
					t.Fatalf("%+v %v", k, err)
				}
				return
			}
			if err != nil || len(k.ClusterDNS) != 1 || k.ClusterDNS[0] != tt.dns || k.Path != tt.path {
				t.Fatalf("%+v %v", k, err)
			}
		})
	}
}
