package containerd

// Daemon-side pulls: containerd's Transfer service downloads and unpacks an image inside
// the daemon, so the bytes go registry → containerd's content store once, instead of
// registry → precache → gRPC → content store and back to the daemon's unpacker
// (docs/benchmarks.md has the difference).
//
// The transfer path accelerates the client-side one; it has no rules of its own. The core
// resolves the tag and checks the digest before Fetch, as always; Fetch takes the transfer
// path only when it can do exactly what the client-side path does, and leaves everything
// else to the client-side path:
//
//   - The daemon serves it: the transfer service, and the streaming service that carries
//     credentials and progress (containerd 2.x; 1.6 has neither). Open asks the daemon
//     (introspection), not a version string.
//   - No record named repo@sha256:<target> exists. The transfer's image store creates that
//     record, and on AlreadyExists it updates the WHOLE record, labels included, without
//     field paths: a pin someone else set would be lost. With no record there is nothing
//     to lose. The record the transfer creates carries only the CRI's own
//     io.cri-containerd.image label (see transfer), and Fetch deletes it before it
//     returns, whatever happened: Fetch creates no record (cache.Store's contract), and the
//     core records the image, with its labels and by field paths, only once it has checked
//     it. What remains: a record of that name created by another client during the
//     transfer (a pull of the same digest) would be replaced, then deleted, and recreated
//     by the core with the core's labels.
//   - The node platform's manifest can be named exactly. The transfer service filters an
//     index with a strict matcher for the platforms it is given and unpacks whatever its
//     unpack configuration matches (any architecture of the OS by default), so Fetch reads
//     the index first (into the content store, where the daemon then finds it), picks the
//     single best manifest as the client-side path and the CRI do, and asks for exactly
//     that platform: on amd64, linux/386's layers are not fetched. An index without such a
//     manifest, a nested index, or two manifests for the same platform go client-side.
//   - The registry paths are healthy as far as this process knows: the daemon has
//     containerd's 30 s timeouts, not --registry-timeout. A host of hosts.toml this process
//     found dead (in the resolve), --dns-fallback (the daemon resolves names with the
//     node's resolver) and a transfer that stalled within the last minute send the pull
//     client-side, where the deadlines, the dead-host memory and the exact messages are.
//   - A transfer that makes no progress for --registry-stall-timeout, while no other
//     transfer of this store does either (the daemon's download limit is shared, so one
//     image may wait for another's downloads), is cancelled, and so is a transfer that
//     fails: its partial downloads are dropped and the client-side path pulls the image, in
//     the same lease. The daemon's progress counts bytes stored, which its copy does a MiB
//     at a time: a registry sending less than 1 MiB per stall timeout looks stalled here,
//     and a registry that really stalls costs the stall timeout twice (once here, once on
//     the client-side path, which then names the host and the bytes received).
//
// Everything the transfer fetches and unpacks is held by the caller's lease: containerd's
// client sends the lease of ctx as gRPC metadata, and the daemon's transfer service uses a
// lease it finds there instead of creating its own (core/transfer/local: withLease).
//
// The transfer service has its own download limit, shared by every transfer of the daemon
// (the CRI's pulls too, unless it is configured for local pulls): max_concurrent_downloads
// of the io.containerd.transfer.v1.local plugin (default 3). --max-concurrent-downloads
// bounds the client-side path only.
//
// --hosts-dir is read by the daemon, at its own filesystem path: it must be the node's
// path (the default /etc/containerd/certs.d is, and the DaemonSet mounts the node's
// certs.d at that same path).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/transfer"
	imagestore "github.com/containerd/containerd/v2/core/transfer/image"
	ociregistry "github.com/containerd/containerd/v2/core/transfer/registry"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precache/precache/internal/cache"
)

// PullPath is how Fetch downloads an image.
type PullPath string

const (
	// PullAuto takes the transfer service where the daemon serves it, else the client-side path.
	PullAuto PullPath = "auto"
	// PullTransfer requires the transfer service: Open fails against a daemon without it.
	// Fetch still leaves an image the transfer cannot pull exactly to the client-side path.
	PullTransfer PullPath = "transfer"
	// PullClient pulls in this process: resolver, fetch handlers and unpacker client-side.
	PullClient PullPath = "client"
)

// ParsePullPath checks a --pull-path value; empty is PullAuto.
func ParsePullPath(s string) (PullPath, error) {
	switch p := PullPath(s); p {
	case "":
		return PullAuto, nil
	case PullAuto, PullTransfer, PullClient:
		return p, nil
	}
	return "", fmt.Errorf("invalid pull path %q: auto, transfer or client", s)
}

// PullEvent says which path a Fetch took, for the caller's log.
type PullEvent struct {
	Ref  string
	Path PullPath // PullTransfer or PullClient
	// Why says why the client-side path was taken by a store that has the transfer path.
	Why string
	// Err is set when a transfer was started and given up (it stalled, or failed), and the
	// client-side path took over.
	Err error
}

// maxIndexSize bounds an index read to choose the node platform's manifest.
const maxIndexSize = 8 << 20

// transferPath is a Store's state for daemon-side pulls.
type transferPath struct {
	// off says why the store pulls client-side only ("": it uses the transfer service).
	off   string
	stall time.Duration // 0: no stall watch
	// lastAny is when any transfer of the store last made progress (unix nanoseconds).
	lastAny atomic.Int64
	// offUntil: a transfer stalled; transfers are left alone until then (unix nanoseconds).
	offUntil atomic.Int64
}

// openTransfer decides, at Open, whether the store may pull through the daemon.
func openTransfer(ctx context.Context, client *containerd.Client, cfg Config) (*transferPath, error) {
	path, err := ParsePullPath(string(cfg.PullPath))
	if err != nil {
		return nil, err
	}
	if path == PullClient {
		return &transferPath{off: "--pull-path client"}, nil
	}
	missing, err := transferMissing(ctx, client)
	if err != nil {
		return nil, err
	}
	if missing != "" {
		if path == PullTransfer {
			return nil, fmt.Errorf("--pull-path transfer: %s (containerd 2.x serves it); use --pull-path auto or client", missing)
		}
		return &transferPath{off: missing}, nil
	}
	return &transferPath{stall: orDefault(cfg.RegistryStallTimeout, DefaultRegistryStallTimeout)}, nil
}

// transferMissing names what the daemon lacks for pulls through its transfer service
// (empty: nothing). A pull needs the transfer plugin, its gRPC service, and the streaming
// service that carries credentials and progress between the daemon and this process.
func transferMissing(ctx context.Context, client *containerd.Client) (string, error) {
	resp, err := client.IntrospectionService().Plugins(ctx,
		"type=="+string(plugins.TransferPlugin),
		"type=="+string(plugins.GRPCPlugin)+",id==transfer",
		"type=="+string(plugins.GRPCPlugin)+",id==streaming")
	if err != nil {
		return "", grpcCause(err)
	}
	have := map[string]bool{}
	for _, p := range resp.Plugins {
		if p.InitErr == nil {
			have[p.Type+"/"+p.ID] = true
			have[p.Type] = true
		}
	}
	switch {
	case !have[string(plugins.TransferPlugin)]:
		return "containerd has no transfer service", nil
	case !have[string(plugins.GRPCPlugin)+"/transfer"]:
		return "containerd does not serve containerd.services.transfer.v1.Transfer", nil
	case !have[string(plugins.GRPCPlugin)+"/streaming"]:
		return "containerd does not serve containerd.services.streaming.v1.Streaming", nil
	}
	return "", nil
}

// PullPath is how this store pulls: PullTransfer when the daemon's transfer service is
// used (where it can pull an image exactly), PullClient otherwise.
func (s *Store) PullPath() PullPath {
	if s.xfer.off != "" {
		return PullClient
	}
	return PullTransfer
}

func (s *Store) report(e PullEvent) {
	if s.cfg.OnPull != nil {
		s.cfg.OnPull(e)
	}
}

// fetchTransfer pulls ref through the daemon's transfer service when it can do exactly
// what the client-side path does. done=false leaves the pull to the client-side path.
func (s *Store) fetchTransfer(ctx context.Context, ref string, target ocispec.Descriptor) (done bool, _ error) {
	if s.xfer.off != "" {
		s.report(PullEvent{Ref: ref, Path: PullClient, Why: s.xfer.off})
		return false, nil
	}
	platform, why, err := s.transferPlan(ctx, ref, target)
	if err != nil {
		return true, err
	}
	if why != "" {
		s.report(PullEvent{Ref: ref, Path: PullClient, Why: why})
		return false, nil
	}

	err = s.transfer(ctx, ref, platform)
	// The transfer's image store names the image ref, a record that did not exist before:
	// it goes again, whatever happened, so Fetch leaves no record behind.
	if derr := s.dropRecord(ctx, ref); derr != nil && err == nil {
		return true, derr
	}
	var gaveUp *transferGaveUp
	switch {
	case errors.As(err, &gaveUp):
		s.report(PullEvent{Ref: ref, Path: PullClient, Why: "the transfer was given up", Err: gaveUp.err})
		return false, nil
	case err != nil:
		return true, err
	}

	h, err := s.Check(ctx, target)
	if err == nil && h.Complete && !h.Unpacked {
		// The transfer service unpacks only into the snapshotters of its unpack_config;
		// another snapshotter of the CRI's is unpacked into from the content store.
		if err = s.Unpack(ctx, target); err == nil {
			h, err = s.Check(ctx, target)
		}
	}
	switch {
	case err != nil:
		return true, err
	case !h.Complete || !h.Unpacked:
		what := h.Problem
		if what == "" {
			what = fmt.Sprintf("complete=%t unpacked=%t missing=%v", h.Complete, h.Unpacked, h.Missing)
		}
		return true, fmt.Errorf("%w after the transfer: %s", cache.ErrIncomplete, what)
	}
	s.report(PullEvent{Ref: ref, Path: PullTransfer})
	return true, nil
}

// transferPlan returns the exact platform to ask the transfer service for, or why the
// client-side path must pull ref instead.
func (s *Store) transferPlan(ctx context.Context, ref string, target ocispec.Descriptor) (_ ocispec.Platform, why string, _ error) {
	var none ocispec.Platform
	if s.cfg.DNS != nil {
		return none, "registry names resolve through --dns-fallback, in this process only", nil
	}
	if until := s.xfer.offUntil.Load(); time.Now().UnixNano() < until {
		return none, "a transfer stalled less than " + deadHostFor.String() + " ago", nil
	}
	spec, err := reference.Parse(ref)
	if err != nil || spec.Digest() != target.Digest {
		return none, "not a reference by the target's digest", nil
	}
	if _, err := s.client.ImageService().Get(ctx, ref); err == nil {
		return none, "the record " + ref + " exists: the transfer service would replace its labels", nil
	} else if !errdefs.IsNotFound(err) {
		return none, "", grpcCause(err)
	}
	if host := s.deadHost(ctx, spec.Hostname()); host != "" {
		return none, "registry host " + host + " did not answer in time", nil
	}

	switch {
	case images.IsManifestType(target.MediaType):
		// A single manifest: the client-side path fetches and unpacks it whole too, and
		// Check says whether it is the node's platform.
		return s.spec, "", nil
	case !images.IsIndexType(target.MediaType):
		return none, "media type " + target.MediaType, nil
	}
	idx, why, err := s.readIndex(ctx, ref, target)
	if err != nil || why != "" {
		return none, why, err
	}
	p, why := exactPlatform(idx, s.platform, s.spec)
	return p, why, nil
}

// exactPlatform picks the index's single best manifest for the node, as the client-side
// path and the CRI do, and returns its platform, which the transfer service's strict
// matcher then takes alone — or says why no platform names that manifest alone.
func exactPlatform(idx ocispec.Index, node platforms.MatchComparer, spec ocispec.Platform) (ocispec.Platform, string) {
	var best *ocispec.Descriptor
	for i, m := range idx.Manifests {
		if m.Platform == nil || !node.Match(*m.Platform) {
			continue
		}
		if best == nil || node.Less(*m.Platform, *best.Platform) {
			best = &idx.Manifests[i]
		}
	}
	switch {
	case best == nil:
		return ocispec.Platform{}, "the index has no manifest for the node's " + platforms.Format(spec)
	case !images.IsManifestType(best.MediaType):
		return ocispec.Platform{}, "the node platform's entry is not a manifest (" + best.MediaType + ")"
	}
	exact := platforms.NewMatcher(*best.Platform)
	n := 0
	for _, m := range idx.Manifests {
		if m.Platform != nil && exact.Match(*m.Platform) {
			n++
		}
	}
	if n > 1 {
		return ocispec.Platform{}, fmt.Sprintf("the index has %d manifests for %s", n, platforms.Format(*best.Platform))
	}
	return *best.Platform, ""
}

// readIndex reads target, an index, from the content store, or fetches it into the
// content store (under the caller's lease; the daemon then finds it there).
func (s *Store) readIndex(ctx context.Context, ref string, target ocispec.Descriptor) (ocispec.Index, string, error) {
	var idx ocispec.Index
	if target.Size > maxIndexSize {
		return idx, fmt.Sprintf("the index is %d bytes", target.Size), nil
	}
	cs := s.client.ContentStore()
	b, err := content.ReadBlob(ctx, cs, target)
	if errdefs.IsNotFound(err) {
		b, err = s.fetchBlob(ctx, ref, target)
	}
	if err != nil {
		return idx, "", err
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return idx, "", fmt.Errorf("index %s: %w", target.Digest, err)
	}
	return idx, "", nil
}

// fetchBlob downloads a small blob through this process's resolver and stores it; the
// content store checks its digest and size.
func (s *Store) fetchBlob(ctx context.Context, ref string, desc ocispec.Descriptor) ([]byte, error) {
	fetcher, err := s.resolver.Fetcher(ctx, ref)
	if err != nil {
		return nil, classify(err)
	}
	rc, err := fetcher.Fetch(ctx, desc)
	if err != nil {
		return nil, classify(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, desc.Size))
	if err != nil {
		return nil, classify(err)
	}
	if err := content.WriteBlob(ctx, s.client.ContentStore(), remotes.MakeRefKey(ctx, desc), bytes.NewReader(b), desc); err != nil {
		return nil, fmt.Errorf("storing %s: %w", desc.Digest, classifyStore(err))
	}
	return b, nil
}

// deadHost names a host of hosts.toml for domain that this process found dead (in the
// resolve that preceded Fetch), or "".
func (s *Store) deadHost(ctx context.Context, domain string) string {
	hosts, err := configureHosts(ctx, hostOptions(s.cfg.HostsDir, nil))(domain)
	if err != nil {
		return ""
	}
	for _, h := range hosts {
		// Keyed as the deadline transport keys them: by scheme and host, as in the request URL.
		if s.dead.get(h.Scheme+"://"+h.Host) != nil {
			return h.Host
		}
	}
	return ""
}

// dropRecord deletes the record the transfer created (if it did), with a context of its
// own: it runs after failures too, when the caller's may be cancelled.
func (s *Store) dropRecord(ctx context.Context, name string) error {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := s.client.ImageService().Delete(dctx, name); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("removing the transfer's record %s: %w", name, grpcCause(err))
	}
	return nil
}

// transferGaveUp: the transfer stalled or failed; the client-side path takes over.
type transferGaveUp struct{ err error }

func (e *transferGaveUp) Error() string { return "transfer given up: " + e.err.Error() }
func (e *transferGaveUp) Unwrap() error { return e.err }

// credentialsError: reading precache's registry credentials failed during a transfer.
type credentialsError struct{ err error }

func (e *credentialsError) Error() string { return e.err.Error() }
func (e *credentialsError) Unwrap() error { return e.err }

// transfer runs one transfer of ref (repo@digest) into the image store for platform.
func (s *Store) transfer(ctx context.Context, ref string, platform ocispec.Platform) error {
	creds, err := dockerCredentials(s.cfg.DockerConfig)
	if err != nil {
		return err
	}
	tctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	src, err := ociregistry.NewOCIRegistry(tctx, ref,
		ociregistry.WithHostDir(s.cfg.HostsDir),
		ociregistry.WithCredentials(transferCredentials{get: creds, fail: cancel}))
	if err != nil {
		return err
	}
	// Every platform's manifest and config (WithAllMetadata: the record keeps the
	// registry's index digest and can be exported whole), the layers of exactly one
	// platform, unpacked into the CRI's snapshotter. The record gets the CRI's own label
	// and nothing of precache's: the CRI adopts a record without it (it writes the label
	// back and creates the image ID's record) asynchronously, and would re-create the
	// record after Fetch deleted it; with it, the CRI only reads the record.
	dst := imagestore.NewStore(ref, imagestore.WithImageLabels(map[string]string{cache.LabelCRIManaged: "managed"}),
		imagestore.WithPlatforms(platform), imagestore.WithAllMetadata, imagestore.WithUnpack(platform, s.snapshotter))
	w := s.xfer.watch(cancel)
	defer w.stop()
	err = s.client.Transfer(tctx, src, dst, transfer.WithProgress(w.progress))
	if err == nil {
		return nil
	}
	var ce *credentialsError
	var stall *TransferStallError
	cause := context.Cause(tctx)
	switch {
	case ctx.Err() != nil:
		return context.Cause(ctx)
	case errors.As(cause, &ce):
		return ce
	case isNoSpace(err):
		return classifyStore(err)
	case errors.As(cause, &stall):
		s.xfer.offUntil.Store(time.Now().Add(deadHostFor).UnixNano())
		err = stall
	default:
		err = grpcCause(err)
	}
	// The client-side path starts the unfinished downloads afresh: resuming the daemon's
	// partial ones needs range requests, which not every registry serves.
	s.abortIngests(ctx, w.unfinished())
	return &transferGaveUp{err: err}
}

// abortIngests drops the content store's partial downloads called refs, best effort.
func (s *Store) abortIngests(ctx context.Context, refs []string) {
	cs := s.client.ContentStore()
	for _, ref := range refs {
		abort(ctx, cs, ref)
	}
}

// transferCredentials answers the daemon's credential requests from precache's docker
// config. containerd's client sends no answer when the helper fails, and the daemon
// would wait for one: a failure cancels the transfer instead.
type transferCredentials struct {
	get  func(host string) (string, string, error)
	fail context.CancelCauseFunc
}

func (c transferCredentials) GetCredentials(_ context.Context, _, host string) (ociregistry.Credentials, error) {
	user, secret, err := c.get(host)
	if err != nil {
		c.fail(&credentialsError{err})
		return ociregistry.Credentials{}, err
	}
	return ociregistry.Credentials{Host: host, Username: user, Secret: secret}, nil
}

// TransferStallError: a transfer made no progress for the stall timeout, and neither did
// any other transfer of the store.
type TransferStallError struct {
	After time.Duration
	// Object is the download in progress when it stalled ("blob sha256:0123456789ab…"), if any.
	Object string
	// Got and Size are its bytes stored and expected.
	Got, Size int64
}

func (e *TransferStallError) Error() string {
	if e.Object == "" {
		return fmt.Sprintf("containerd's transfer service made no progress for %s (--registry-stall-timeout)", e.After)
	}
	return fmt.Sprintf("containerd's transfer service stored nothing for %s in the middle of %s (%d of %d bytes stored; --registry-stall-timeout)",
		e.After, e.Object, e.Got, e.Size)
}

// transferWatch follows one transfer's progress and cancels it when it stalls.
type transferWatch struct {
	x      *transferPath
	cancel context.CancelCauseFunc
	last   atomic.Int64 // unix nanoseconds
	done   chan struct{}
	once   sync.Once

	mu     sync.Mutex
	active map[string]transfer.Progress // downloads started and not complete, by name
}

func (x *transferPath) watch(cancel context.CancelCauseFunc) *transferWatch {
	w := &transferWatch{x: x, cancel: cancel, done: make(chan struct{}), active: map[string]transfer.Progress{}}
	w.touch()
	if x.stall > 0 {
		go w.run()
	}
	return w
}

func (w *transferWatch) stop() { w.once.Do(func() { close(w.done) }) }

func (w *transferWatch) touch() {
	now := time.Now().UnixNano()
	w.last.Store(now)
	w.x.lastAny.Store(now)
}

// progress receives the daemon's events: "waiting" when a blob is added, "downloading"
// each time its stored offset grows, "complete" or "already exists", "extracting" while
// a layer is applied. Every event is progress.
func (w *transferWatch) progress(p transfer.Progress) {
	w.touch()
	w.mu.Lock()
	defer w.mu.Unlock()
	switch p.Event {
	case "waiting", "downloading":
		if p.Desc != nil {
			w.active[p.Name] = p
		}
	default:
		delete(w.active, p.Name)
	}
}

func (w *transferWatch) run() {
	tick := time.NewTicker(min(max(w.x.stall/10, 50*time.Millisecond), time.Second))
	defer tick.Stop()
	for {
		select {
		case <-w.done:
			return
		case <-tick.C:
			now := time.Now().UnixNano()
			stall := w.x.stall.Nanoseconds()
			if now-w.last.Load() >= stall && now-w.x.lastAny.Load() >= stall {
				w.cancel(w.stalled())
				return
			}
		}
	}
}

// unfinished names the downloads the transfer started and did not finish (ingest refs).
func (w *transferWatch) unfinished() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	refs := make([]string, 0, len(w.active))
	for ref := range w.active {
		refs = append(refs, ref)
	}
	return refs
}

func (w *transferWatch) stalled() *TransferStallError {
	e := &TransferStallError{After: w.x.stall}
	w.mu.Lock()
	defer w.mu.Unlock()
	var got *transfer.Progress
	for _, p := range w.active {
		if got == nil || p.Progress > got.Progress {
			got = &p
		}
	}
	if got != nil {
		kind := "blob"
		if images.IsManifestType(got.Desc.MediaType) || images.IsIndexType(got.Desc.MediaType) {
			kind = "manifest"
		}
		d := got.Desc.Digest.String()
		if alg, hex, ok := strings.Cut(d, ":"); ok && len(hex) > 12 {
			d = alg + ":" + hex[:12] + "…"
		}
		e.Object, e.Got, e.Size = kind+" "+d, got.Progress, got.Total
	}
	return e
}
