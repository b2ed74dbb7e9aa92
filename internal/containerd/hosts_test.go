package containerd

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"
)

// TestDockerCredentialsFile: an explicit --docker-config file answers for its registries,
// Docker Hub under its index name, and the process environment is left as it was (the
// adapter used to set DOCKER_CONFIG, a process-wide side effect of a constructor).
func TestDockerCredentialsFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.json")
	auth := func(u, p string) string { return base64.StdEncoding.EncodeToString([]byte(u + ":" + p)) }
	cfg := `{"auths": {
		"registry.local:5000": {"auth": "` + auth("alice", "secret") + `"},
		"https://index.docker.io/v1/": {"auth": "` + auth("bob", "hub") + `"}
	}}`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", "/nonexistent-before")
	creds, err := dockerCredentials(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := os.Getenv("DOCKER_CONFIG"); got != "/nonexistent-before" {
		t.Fatalf("DOCKER_CONFIG = %q after dockerCredentials: the environment was changed", got)
	}
	tests := []struct{ host, user, pass string }{
		{"registry.local:5000", "alice", "secret"},
		{"registry-1.docker.io", "bob", "hub"},
		{"quay.io", "", ""},
	}
	for _, tt := range tests {
		u, p, err := creds(tt.host)
		if err != nil || u != tt.user || p != tt.pass {
			t.Errorf("creds(%s) = %q, %q, %v; want %q, %q", tt.host, u, p, err, tt.user, tt.pass)
		}
	}
	if _, err := dockerCredentials(filepath.Join(dir, "missing.json")); err == nil {
		t.Error("a missing --docker-config file was accepted")
	}
}
