package containerd

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	dockerconfig "github.com/docker/cli/cli/config"
	"github.com/docker/cli/cli/config/configfile"
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

// withTransport customises every registry client containerd's hosts.toml loader builds
// (the shared one and each host's own): names resolve through r when it is set, and each
// request gets t's deadlines (see deadlineTransport). containerd calls UpdateClient again
// for a host's copy of the shared client, so an already wrapped transport is left alone.
func withTransport(opts config.HostOptions, r *net.Resolver, t deadlineTransport) config.HostOptions {
	opts.UpdateClient = func(c *http.Client) error {
		if _, done := c.Transport.(*deadlineTransport); done {
			return nil
		}
		if ht, ok := c.Transport.(*http.Transport); ok {
			if r != nil {
				ht.DialContext = (&net.Dialer{Resolver: r, Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
			}
			if t.answer > 0 {
				// The deadline covers the handshake and the headers; containerd's own 10 s and
				// 30 s limits would only turn a longer --registry-timeout into errors that
				// containerd retries.
				ht.TLSHandshakeTimeout, ht.ResponseHeaderTimeout = 0, 0
			}
		} else if r != nil {
			return fmt.Errorf("unexpected registry transport %T", c.Transport)
		}
		wrapped := t
		wrapped.next = c.Transport
		c.Transport = &wrapped
		return nil
	}
	return opts
}

// RegistryHosts lists the host names a pull of an image from domain ("docker.io") may
// contact, in the order containerd tries them: the mirrors of hosts.toml, then the server.
func RegistryHosts(ctx context.Context, hostsDir, domain string) ([]string, error) {
	hosts, err := configureHosts(ctx, hostOptions(hostsDir, nil))(domain)
	if err != nil {
		return nil, fmt.Errorf("reading %s for %s: %w", hostsDir, domain, err)
	}
	var out []string
	for _, h := range hosts {
		if h.Capabilities&(docker.HostCapabilityPull|docker.HostCapabilityResolve) == 0 {
			continue
		}
		name := h.Host
		if hn, _, err := net.SplitHostPort(h.Host); err == nil {
			name = hn
		}
		out = append(out, name)
	}
	return out, nil
}

// dockerCredentials reads registry credentials the way docker, crane and the kubelet's
// credential-less pulls expect: a docker config.json (auths, credHelpers, credsStore).
// path names a config.json; empty means $DOCKER_CONFIG or ~/.docker.
func dockerCredentials(path string) (func(host string) (string, string, error), error) {
	var keychain authn.Keychain = authn.DefaultKeychain
	if path != "" {
		// An explicit file is read here, not through $DOCKER_CONFIG: the environment is the
		// process's, and a library must not change it.
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("registry credentials: %w", err)
		}
		cf, err := dockerconfig.LoadFromReader(f)
		_ = f.Close()
		if err != nil {
			return nil, fmt.Errorf("registry credentials %s: %w", path, err)
		}
		keychain = fileKeychain{cf}
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

// fileKeychain answers from one docker config file (auths, credHelpers, credsStore).
type fileKeychain struct{ cf *configfile.ConfigFile }

func (k fileKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	key := r.RegistryStr()
	if key == "index.docker.io" {
		key = authn.DefaultAuthKey
	}
	cfg, err := k.cf.GetAuthConfig(key)
	if err != nil {
		return nil, err
	}
	if cfg.Username == "" && cfg.Password == "" && cfg.Auth == "" && cfg.IdentityToken == "" && cfg.RegistryToken == "" {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(authn.AuthConfig{
		Username: cfg.Username, Password: cfg.Password, Auth: cfg.Auth,
		IdentityToken: cfg.IdentityToken, RegistryToken: cfg.RegistryToken,
	}), nil
}

// registry is the authn.Resource for a host.
type registry string

func (r registry) String() string      { return string(r) }
func (r registry) RegistryStr() string { return string(r) }
