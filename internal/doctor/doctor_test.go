package doctor

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/precache/precache/internal/hostfs"
)

// writeTree lays out a node's files under a fresh root: path → content, or "-> DEST" for
// a symbolic link to DEST (as written, absolute or relative).
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if dest, ok := strings.CutPrefix(content, "-> "); ok {
			if err := os.Symlink(dest, full); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestPinningSupported(t *testing.T) {
	t.Parallel()
	for v, want := range map[string]bool{"1.6.20~ds1": false, "v1.7.2": false, "1.7.3": true, "v1.7.27": true, "2.4.2+unknown": true, "v2.0.0": true, "junk": false} {
		if got := PinningSupported(v); got != want {
			t.Errorf("PinningSupported(%q) = %t, want %t", v, got, want)
		}
	}
}

func TestContainerdCheck(t *testing.T) {
	t.Parallel()
	cri := func(snap string, discard bool, configPath string) map[string]any {
		return map[string]any{"config": map[string]any{
			"containerd": map[string]any{"snapshotter": snap, "discardUnpackedLayers": discard},
			"registry":   map[string]any{"configPath": configPath},
		}}
	}
	tests := []struct {
		name string
		c    Containerd
		want Status
		says string
	}{
		{"good", Containerd{Version: "2.4.2", Snapshotter: "overlayfs", CRI: cri("overlayfs", false, "/etc/containerd/certs.d")}, OK, ""},
		{"old", Containerd{Version: "1.6.20", Snapshotter: "overlayfs", CRI: cri("overlayfs", false, "/etc/containerd/certs.d")}, Warn, "pinning needs ≥ 1.7.3"},
		{"snapshotter differs", Containerd{Version: "2.4.2", Snapshotter: "overlayfs", CRI: cri("native", false, "/x")}, Warn, `unpacks into "native"`},
		{"discard", Containerd{Version: "2.4.2", Snapshotter: "overlayfs", CRI: cri("overlayfs", true, "/x")}, Warn, "discard_unpacked_layers"},
		{"no config_path", Containerd{Version: "2.4.2", Snapshotter: "overlayfs", CRI: cri("overlayfs", false, "")}, Warn, "config_path is empty"},
		{"2.x file without config_path: the default applies", Containerd{Version: "2.4.2", Snapshotter: "overlayfs",
			Config: map[string]any{"plugins": map[string]any{"io.containerd.cri.v1.images": map[string]any{"snapshotter": "overlayfs"}}}}, OK, ""},
		{"1.6 file with discard_unpacked_layers", Containerd{Version: "1.7.20", Snapshotter: "overlayfs",
			Config: map[string]any{"plugins": map[string]any{"io.containerd.grpc.v1.cri": map[string]any{"containerd": map[string]any{"discard_unpacked_layers": true},
				"registry": map[string]any{"config_path": "/etc/containerd/certs.d"}}}}}, Warn, "discard_unpacked_layers"},
		{"unreachable", Containerd{Address: "/x.sock", Reachable: os.ErrNotExist}, Fail, "cannot reach containerd at /x.sock: file does not exist"},
		{"unreachable, said once", Containerd{Address: "/x.sock", Reachable: errors.New("cannot reach containerd at /x.sock: no such file or directory; is containerd running?")},
			Fail, "cannot reach containerd at /x.sock: no such file or directory; is containerd running?"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := ContainerdCheck(tt.c)
			if got.Status != tt.want || !strings.Contains(got.Summary, tt.says) || strings.Count(got.Summary, "cannot reach containerd") > 1 {
				t.Fatalf("%s %q, want %s containing %q (once)", got.Status, got.Summary, tt.want, tt.says)
			}
		})
	}
}

func TestKubeletGCAndDisk(t *testing.T) {
	t.Parallel()
	root := writeTree(t, map[string]string{"var/lib/kubelet/config.yaml": "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nclusterDNS:\n- 10.233.0.3\nimageGCHighThresholdPercent: 70\n"})
	k, err := ReadKubelet(hostfs.Root(root), "/var/lib/kubelet/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if k.ImageGCHighThresholdPercent != 70 || k.ImageGCLowThresholdPercent != 80 || len(k.ClusterDNS) != 1 {
		t.Fatalf("read %+v", k)
	}
	if got := KubeletGC(k, 75, false).Status; got != Fail {
		t.Errorf("75 %% used, high threshold 70, no pinning: %s, want FAIL", got)
	}
	if got := KubeletGC(k, 75, true).Status; got != OK {
		t.Errorf("with pinning: %s, want OK", got)
	}
	if got := Disk("/var/lib/containerd", 1<<30, 2<<30).Status; got != Fail {
		t.Errorf("disk 1 GiB free for 2 GiB: %s", got)
	}
	if got := Disk("/var/lib/containerd", 3<<30, 2<<30).Status; got != Warn {
		t.Errorf("disk 3 GiB free for 2 GiB: %s", got)
	}
	if got := ExitCode([]Result{{Status: OK}, {Status: Warn}}, false); got != 0 {
		t.Errorf("exit %d for a warning without --strict", got)
	}
	if got := ExitCode([]Result{{Status: Warn}}, true); got != 1 {
		t.Errorf("exit %d for a warning with --strict", got)
	}
	if got := ExitCode([]Result{{Status: Warn}, {Status: Fail}}, true); got != 2 {
		t.Errorf("exit %d with a failure", got)
	}
}
