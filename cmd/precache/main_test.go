package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/precache/precache/internal/manifest"
)

func runCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return out.String(), errb.String(), code
}

func TestImagesFromFlagsAndEnv(t *testing.T) {
	// Not parallel: t.Setenv.
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want []string
	}{
		{
			name: "flag",
			args: []string{"images", "--calico-version", "v3.28.1", "-o", "json"},
			want: []string{"docker.io/calico/cni:v3.28.1", "docker.io/calico/kube-controllers:v3.28.1", "docker.io/calico/node:v3.28.1", "docker.io/calico/typha:v3.28.1"},
		},
		{
			name: "env",
			env:  map[string]string{"PRECACHE_CALICO_VERSION": "v3.31.2", "PRECACHE_REGISTRY": "registry.local:5000"},
			args: []string{"images", "-o", "json"},
			want: []string{"registry.local:5000/calico/cni:v3.31.2", "registry.local:5000/calico/kube-controllers:v3.31.2", "registry.local:5000/calico/node:v3.31.2", "registry.local:5000/calico/typha:v3.31.2"},
		},
		{
			name: "flag beats env",
			env:  map[string]string{"PRECACHE_CALICO_VERSION": "v3.31.2"},
			args: []string{"images", "--calico-version", "v3.28.1", "-o", "json"},
			want: []string{"docker.io/calico/cni:v3.28.1", "docker.io/calico/kube-controllers:v3.28.1", "docker.io/calico/node:v3.28.1", "docker.io/calico/typha:v3.28.1"},
		},
		{
			name: "images list from env, no catalog",
			env:  map[string]string{"PRECACHE_IMAGES": "busybox, quay.io/calico/node:v3.31.0"},
			args: []string{"images", "-o", "json"},
			want: []string{"docker.io/library/busybox:latest", "quay.io/calico/node:v3.31.0"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			out, errOut, code := runCLI(t, tt.args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			var imgs []manifest.Image
			if err := json.Unmarshal([]byte(out), &imgs); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			got := manifest.Names(imgs)
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("images = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	lock := filepath.Join(t.TempDir(), "bad.lock")
	if err := os.WriteFile(lock, []byte(`{"version":1,"images":{"calico/node:v3.28.1":"md5:nope"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown command", []string{"pull"}, `unknown command "pull"`},
		{"bad log format", []string{"images", "--calico-version", "v3.28.1", "--log-format", "xml"}, `invalid --log-format "xml"`},
		{"bad lock digest", []string{"images", "--calico-version", "v3.28.1", "--lock", lock}, "invalid digest"},
		{"extra argument", []string{"status", "calico"}, `unknown command "calico"`},
		{"bad image", []string{"images", "--image", "calico/Node:v3.28.1"}, "--image: invalid image reference"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, errOut, code := runCLI(t, tt.args...)
			if code != 2 || !strings.Contains(errOut, tt.want) {
				t.Fatalf("exit %d, stderr %q; want exit 2 and %q", code, errOut, tt.want)
			}
		})
	}
}

func TestVerbosityFromEnv(t *testing.T) {
	t.Setenv("PRECACHE_VERBOSE", "2")
	cmd := newRootCommand()
	cmd.SetArgs([]string{"version"})
	cmd.SetOut(&bytes.Buffer{})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	v, err := cmd.PersistentFlags().GetCount("verbose")
	if err != nil {
		t.Fatal(err)
	}
	if v != 2 {
		t.Fatalf("verbosity = %d from PRECACHE_VERBOSE=2", v)
	}
}
