package main

import (
	"context"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/precache/precache/internal/bundle"
	"github.com/precache/precache/internal/cache"
	pcontainerd "github.com/precache/precache/internal/containerd"
	"github.com/precache/precache/internal/dns"
	"github.com/precache/precache/internal/manifest"
	"github.com/precache/precache/internal/source"
)

// The ports of internal/source, wired to containerd, the bundle file and the registry.

var (
	_ source.Store    = storePort{}
	_ source.Local    = (*bundlePort)(nil)
	_ source.Registry = (*registryPort)(nil)
)

// storePort is the node's containerd as the decision sees it.
type storePort struct {
	store   cache.Store
	offline *cache.Ensurer
}

func (p storePort) Status(ctx context.Context, set []manifest.Image) ([]cache.Row, error) {
	return cache.Status(ctx, p.store, set)
}

func (p storePort) Finish(ctx context.Context, set []manifest.Image) ([]cache.Result, error) {
	return p.offline.Ensure(ctx, set)
}

// bundlePort is a bundle file on the node.
type bundlePort struct {
	path, baseName string
	parallel       int
	store          *pcontainerd.Store
	offline        *cache.Ensurer
	log            *zap.Logger
}

func (p *bundlePort) Name() string { return "bundle " + p.path }

// Holds reads the bundle only as far as its lock (a precache bundle stores it first).
func (p *bundlePort) Holds(context.Context) (*manifest.Lock, error) {
	in, _, err := openBundle(p.path)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	return bundle.PeekLock(in)
}

func (p *bundlePort) Import(ctx context.Context) ([]string, error) {
	in, size, err := openBundle(p.path)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	start := time.Now()
	res, err := bundle.Import(ctx, p.offline, p.store, in, bundle.ImportOptions{BaseName: p.baseName, Parallel: p.parallel})
	var notes []string
	if res != nil {
		notes = res.Notes
	}
	if err != nil {
		return notes, noSpace(ctx, p.store, size, bundleError(p.path, err))
	}
	p.log.Info("bundle imported", zap.String("bundle", p.path), zap.Duration("took", time.Since(start)))
	return notes, nil
}

// registryPort is the network path: the registries' names, then the pull.
type registryPort struct {
	a        *app
	store    *pcontainerd.Store
	fallback *dnsResolverFlag
	// fallbackTimeout bounds the probe through --dns-fallback, from when it starts.
	fallbackTimeout time.Duration
	online          *cache.Ensurer
}

// Reachable probes, per registry domain, the hosts a pull would contact (hosts.toml
// mirrors first; an IP needs no DNS) through the node's resolver, then --dns-fallback.
func (p *registryPort) Reachable(ctx context.Context, set []manifest.Image, deadline time.Time) (bool, string) {
	failures := p.a.probeDNS(ctx, dns.System, set, deadline)
	if len(failures) == 0 {
		return true, ""
	}
	if p.fallback != nil {
		p.a.log.Info("registry names do not resolve through the node's resolver; trying --dns-fallback", zap.String("servers", p.fallback.servers), zap.Any("failures", failureStrings(failures)))
		if failures = p.a.probeDNS(ctx, p.fallback.r, set, time.Now().Add(p.fallbackTimeout)); len(failures) == 0 {
			if err := p.store.UseDNS(ctx, p.fallback.r); err != nil {
				return false, "--dns-fallback: " + err.Error()
			}
			return true, "registry names resolved through --dns-fallback " + p.fallback.servers
		}
	}
	return false, "registry names did not resolve: " + strings.Join(failureStrings(failures), "; ")
}

func (p *registryPort) Pull(ctx context.Context, set []manifest.Image) ([]cache.Result, error) {
	return p.online.Ensure(ctx, set)
}
