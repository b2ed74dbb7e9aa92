package hostfs

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// node builds a node tree under a fresh directory: files (path → content) and symbolic
// links (path → destination, as written). The root is one level below a directory that
// holds a file named "outside", so an escaping link has something to find.
func node(t *testing.T, files, links map[string]string) Root {
	t.Helper()
	parent := t.TempDir()
	if err := os.WriteFile(filepath.Join(parent, "outside"), []byte("the container's file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(parent, "host")
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for p, dest := range links {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		dest = strings.ReplaceAll(dest, "$PARENT", parent)
		if err := os.Symlink(dest, full); err != nil {
			t.Fatal(err)
		}
	}
	return Root(root)
}

const stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n"

func TestReadFile(t *testing.T) {
	t.Parallel()
	ubuntu := map[string]string{"run/systemd/resolve/stub-resolv.conf": stub, "run/systemd/resolve/resolv.conf": "nameserver 169.254.25.10\n"}
	tests := []struct {
		name    string
		files   map[string]string
		links   map[string]string
		path    string
		want    string // content; "" means an error is wanted
		wantErr error
		shown   string // Path.String()
		links1  []Link
	}{
		{
			// Ubuntu: `ls -l /etc/resolv.conf` → ../run/systemd/resolve/stub-resolv.conf on 22.04+,
			// /run/systemd/resolve/stub-resolv.conf where it was made by hand or by older images.
			name:   "absolute symlink, as on Ubuntu nodes",
			files:  ubuntu,
			links:  map[string]string{"etc/resolv.conf": "/run/systemd/resolve/stub-resolv.conf"},
			path:   "/etc/resolv.conf",
			want:   stub,
			shown:  "/etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf",
			links1: []Link{{Path: "/etc/resolv.conf", Dest: "/run/systemd/resolve/stub-resolv.conf"}},
		},
		{
			name:  "relative symlink",
			files: ubuntu,
			links: map[string]string{"etc/resolv.conf": "../run/systemd/resolve/stub-resolv.conf"},
			path:  "etc/resolv.conf",
			want:  stub,
			shown: "/etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf",
		},
		{
			name:  "a chain: resolv.conf → /run/resolvconf → systemd's file",
			files: ubuntu,
			links: map[string]string{"etc/resolv.conf": "/run/resolvconf/resolv.conf", "run/resolvconf": "systemd/resolve"},
			path:  "/etc/resolv.conf",
			want:  "nameserver 169.254.25.10\n",
			shown: "/etc/resolv.conf -> /run/systemd/resolve/resolv.conf",
		},
		{
			name:  "an absolute directory link (a moved containerd root)",
			files: map[string]string{"data/containerd/io.containerd.metadata.v1.bolt/meta.db": "bolt"},
			links: map[string]string{"var/lib/containerd": "/data/containerd"},
			path:  "/var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db",
			want:  "bolt",
			shown: "/var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db -> /data/containerd/io.containerd.metadata.v1.bolt/meta.db",
		},
		{
			name:  "`..` in the path stops at the root",
			files: map[string]string{"etc/resolv.conf": "nameserver 192.0.2.1\n"},
			path:  "/../../../etc/resolv.conf",
			want:  "nameserver 192.0.2.1\n",
			shown: "/etc/resolv.conf",
		},
		{
			name:  "`..` in a link stops at the root: the node's /outside, not the container's",
			files: map[string]string{"outside": "the node's file\n"},
			links: map[string]string{"etc/resolv.conf": "../../../../outside"},
			path:  "/etc/resolv.conf",
			want:  "the node's file\n",
			shown: "/etc/resolv.conf -> /outside",
		},
		{
			name:    "a link escaping with `..` to a file only the container has: not found",
			links:   map[string]string{"etc/resolv.conf": "../../outside"},
			path:    "/etc/resolv.conf",
			wantErr: fs.ErrNotExist,
			shown:   "/etc/resolv.conf -> /outside",
		},
		{
			name:    "an absolute link naming the container's path of a file outside the root: not found",
			links:   map[string]string{"etc/resolv.conf": "$PARENT/outside"},
			path:    "/etc/resolv.conf",
			wantErr: fs.ErrNotExist,
		},
		{
			name:    "a dangling link, as in a container without the node's /run",
			links:   map[string]string{"etc/resolv.conf": "/run/systemd/resolve/stub-resolv.conf"},
			path:    "/etc/resolv.conf",
			wantErr: fs.ErrNotExist,
			shown:   "/etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf",
		},
		{
			name:    "a loop of links",
			links:   map[string]string{"etc/a": "/etc/b", "etc/b": "a"},
			path:    "/etc/a",
			wantErr: syscall.ELOOP,
		},
		{
			name:    "a directory",
			files:   map[string]string{"etc/systemd/resolved.conf": ""},
			path:    "/etc/systemd",
			wantErr: syscall.EISDIR,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := node(t, tt.files, tt.links)
			data, p, err := root.ReadFile(tt.path)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err %v, want %v (read %q)", err, tt.wantErr, data)
				}
				if strings.Contains(err.Error(), string(root)) {
					t.Errorf("error %q shows the root %s: it should speak of node paths", err, root)
				}
			} else if err != nil || string(data) != tt.want {
				t.Fatalf("read %q, %v; want %q", data, err, tt.want)
			}
			if tt.shown != "" && p.String() != tt.shown {
				t.Errorf("shown as %q, want %q", p.String(), tt.shown)
			}
			if tt.links1 != nil && !slices.Equal(p.Links, tt.links1) {
				t.Errorf("links %+v, want %+v", p.Links, tt.links1)
			}
			if err == nil && !strings.HasPrefix(p.Host, string(root)+"/") {
				t.Errorf("host path %s is not under the root %s", p.Host, root)
			}
		})
	}
}

// The root "/" (precache run on the node itself) resolves like the kernel does.
func TestRootSlash(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "f"), filepath.Join(dir, "l")); err != nil {
		t.Fatal(err)
	}
	for _, r := range []Root{"", "/"} {
		data, p, err := r.ReadFile(filepath.Join(dir, "l"))
		if err != nil || string(data) != "x" || p.Host != filepath.Join(dir, "f") || p.Target != p.Host {
			t.Errorf("root %q: %q %+v %v", r, data, p, err)
		}
	}
}

func TestStatAndGlob(t *testing.T) {
	t.Parallel()
	root := node(t, map[string]string{
		"usr/lib/systemd/resolved.conf.d/10-vendor.conf":  "",
		"usr/lib/systemd/resolved.conf.d/notes.txt":       "",
		"etc/systemd/resolved.conf.d.real/kubespray.conf": "",
		"data/containerd/root":                            "",
	}, map[string]string{
		"etc/systemd/resolved.conf.d": "/etc/systemd/resolved.conf.d.real",
		"var/lib/containerd":          "../../data/containerd",
	})
	fi, p, err := root.Stat("/var/lib/containerd")
	if err != nil || !fi.IsDir() || p.String() != "/var/lib/containerd -> /data/containerd" {
		t.Fatalf("stat: %v %+v %v", fi, p, err)
	}
	if _, _, err := root.Stat("/var/lib/absent"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat of a missing path: %v", err)
	}
	for pattern, want := range map[string][]string{
		"/etc/systemd/resolved.conf.d/*.conf":     {"/etc/systemd/resolved.conf.d/kubespray.conf"},
		"/usr/lib/systemd/resolved.conf.d/*.conf": {"/usr/lib/systemd/resolved.conf.d/10-vendor.conf"},
		"/run/systemd/resolved.conf.d/*.conf":     nil,
	} {
		got, err := root.Glob(pattern)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("Glob(%s) = %v, %v; want %v", pattern, got, err, want)
		}
	}
	if _, err := root.Glob("/etc/*/resolved.conf"); !errors.Is(err, filepath.ErrBadPattern) {
		t.Errorf("a pattern in a directory: %v", err)
	}
}
