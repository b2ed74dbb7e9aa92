package containerd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/google/go-containerregistry/pkg/authn"
)

// hostOptions uses containerd's own hosts.toml loader, so mirrors, http:// servers, CA
// files, client certificates and skip_verify mean exactly what they mean to the CRI.
func hostOptions(hostsDir string, creds func(string) (string, string, error)) config.HostOptions {
	opts := config.HostOptions{Credentials: creds}
	if hostsDir != "" {
		opts.HostDir = config.HostDirFromRoot(hostsDir)
	}
	return opts
}

func configureHosts(ctx context.Context, opts config.HostOptions) docker.RegistryHosts {
	return config.ConfigureHosts(ctx, opts)
}

// dockerCredentials reads registry credentials the way docker, crane and the kubelet's
// credential-less pulls expect: a docker config.json (auths, credHelpers, credsStore).
// path names a config.json; empty means $DOCKER_CONFIG or ~/.docker.
func dockerCredentials(path string) (func(host string) (string, string, error), error) {
	keychain := authn.DefaultKeychain
	if path != "" {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("registry credentials: %w", err)
		}
		// go-containerregistry's default keychain reads $DOCKER_CONFIG/config.json.
		if err := os.Setenv("DOCKER_CONFIG", filepath.Dir(path)); err != nil {
			return nil, err
		}
	}
	return func(host string) (string, string, error) {
		// containerd asks with the host it talks to; docker config.json keys Docker Hub
		// under its index name.
		if host == "registry-1.docker.io" {
			host = "index.docker.io"
		}
		a, err := keychain.Resolve(registry(host))
		if err != nil {
			return "", "", fmt.Errorf("registry credentials for %s: %w", host, err)
		}
		cfg, err := a.Authorization()
		if err != nil {
			return "", "", fmt.Errorf("registry credentials for %s: %w", host, err)
		}
		if cfg.IdentityToken != "" {
			return "", cfg.IdentityToken, nil
		}
		return cfg.Username, cfg.Password, nil
	}, nil
}

// registry is the authn.Resource for a host.
type registry string

func (r registry) String() string      { return string(r) }
func (r registry) RegistryStr() string { return string(r) }
