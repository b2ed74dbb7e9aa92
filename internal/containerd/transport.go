package containerd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Config.RegistryTimeout and Config.RegistryStallTimeout.
const (
	// DefaultRegistryTimeout bounds each registry request until its response headers:
	// name, connection, TLS and first byte. containerd's own transport waits 30 s for the
	// headers alone, and its callers try again: minutes on a path that is not coming back.
	DefaultRegistryTimeout = 2 * time.Second
	// DefaultRegistryStallTimeout is how long a response body may send nothing while it is
	// read, like the CRI's image_pull_progress_timeout (5 min there: a pull that a kubelet
	// will retry anyway; here a node waits on it).
	DefaultRegistryStallTimeout = 10 * time.Second
	// deadHostFor is how long a host that did not answer is not asked again. A bootstrap
	// is over well before; the agent asks again on a later reconcile.
	deadHostFor = time.Minute
)

// What a registry request had not done when its deadline passed.
const (
	phaseName     = "name"     // the host name had not resolved
	phaseConnect  = "connect"  // no TCP connection
	phaseTLS      = "tls"      // connected, TLS handshake unfinished
	phaseResponse = "response" // connected (and request sent), no response headers
	phaseStall    = "stall"    // the body stopped arriving
)

// DeadPathError says that a registry host did not answer within the deadline, or stopped
// sending a body it had started. It is not retried: waiting again on a path that sent
// nothing for seconds only delays the next source (another host of hosts.toml, a bundle).
type DeadPathError struct {
	// Host is the host:port the request went to.
	Host string
	// Mirror is the registry the host stands in for ("docker.io"), when it is a mirror.
	Mirror string
	// Phase is what had not happened (phaseName … phaseStall).
	Phase string
	// After is the deadline (or, for a stall, the time without data) that passed.
	After time.Duration
	// Object is what was being fetched ("blob sha256:…"), for a stall.
	Object string
	// Got and Size are the body bytes received and expected (-1: unknown), for a stall.
	Got, Size int64
	// Since is when this host was found dead, when a later request skipped it.
	Since time.Time
}

func (e *DeadPathError) Error() string {
	who := "registry " + e.Host
	if e.Mirror != "" {
		who = "registry mirror " + e.Host + " (for " + e.Mirror + ")"
	}
	var what string
	switch e.Phase {
	case phaseName:
		what = fmt.Sprintf("did not answer: its name did not resolve within %s (--registry-timeout)", e.After)
	case phaseConnect:
		what = fmt.Sprintf("did not answer: no connection within %s, its packets get no reply (--registry-timeout)", e.After)
	case phaseTLS:
		// "TLS handshake timeout" is what containerd's http fallback (an http:// host with
		// TLS settings is tried over https first) looks for to try plain http next.
		what = fmt.Sprintf("accepted the connection but did not finish the TLS handshake within %s (TLS handshake timeout; --registry-timeout)", e.After)
	case phaseStall:
		size := "?"
		if e.Size >= 0 {
			size = fmt.Sprint(e.Size)
		}
		what = fmt.Sprintf("stalled: sent no data for %s in the middle of %s (%d of %s bytes received; --registry-stall-timeout)", e.After, e.Object, e.Got, size)
	default:
		what = fmt.Sprintf("accepted the connection but sent no response within %s (--registry-timeout)", e.After)
	}
	msg := who + " " + what
	if !e.Since.IsZero() {
		msg += fmt.Sprintf("; not asked again for %s", deadHostFor)
	}
	return msg
}

// deadHosts remembers hosts that did not answer, so the requests after the first skip
// them at once: containerd tries the hosts of hosts.toml in order for every manifest and
// blob, and a dead mirror would otherwise cost the deadline on each of them.
type deadHosts struct {
	mu    sync.Mutex
	hosts map[string]*DeadPathError // by scheme://host:port
	now   func() time.Time
}

func newDeadHosts() *deadHosts {
	return &deadHosts{hosts: map[string]*DeadPathError{}, now: time.Now}
}

func (d *deadHosts) mark(key string, e *DeadPathError) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := *e
	c.Since = d.now()
	d.hosts[key] = &c
}

// get returns the error a request to key (scheme://host:port) fails with now, or nil.
func (d *deadHosts) get(key string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, ok := d.hosts[key]
	if !ok {
		return nil
	}
	if d.now().Sub(e.Since) >= deadHostFor {
		delete(d.hosts, key)
		return nil
	}
	c := *e
	return &c
}

// deadlineTransport gives every registry request a deadline until its response headers
// and its body a stall timer, and skips hosts that were found dead. It wraps the
// transport containerd's hosts.toml loader builds, so it applies per host: a dead mirror
// is left for the next host of hosts.toml after the deadline, not after containerd's 30 s
// and its retries.
type deadlineTransport struct {
	next   http.RoundTripper
	answer time.Duration // ≤ 0: none
	stall  time.Duration // ≤ 0: none
	dead   *deadHosts
}

func (t *deadlineTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	host := req.URL.Host
	// By scheme too: containerd's http fallback tries a host over https, then over http.
	key := req.URL.Scheme + "://" + host
	if err := t.dead.get(key); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(req.Context())
	var p progress
	ctx = httptrace.WithClientTrace(ctx, p.trace())
	var timer *time.Timer
	if t.answer > 0 {
		timer = time.AfterFunc(t.answer, cancel)
	}
	resp, err := t.next.RoundTrip(req.WithContext(ctx))
	if timer != nil && !timer.Stop() && req.Context().Err() == nil {
		// The deadline passed (whatever the transport made of the cancellation).
		if resp != nil {
			_ = resp.Body.Close()
		}
		cancel()
		e := &DeadPathError{Host: host, Mirror: mirrorOf(req), Phase: p.phase(), After: t.answer}
		t.dead.mark(key, e)
		return nil, e
	}
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = &stallReader{
		body: resp.Body, stall: t.stall, cancel: cancel,
		dead: func(got int64) error {
			e := &DeadPathError{Host: host, Mirror: mirrorOf(req), Phase: phaseStall, After: t.stall,
				Object: objectOf(req), Got: got, Size: resp.ContentLength}
			t.dead.mark(key, e)
			return e
		},
	}
	return resp, nil
}

// mirrorOf names the registry a request to a mirror is for: containerd adds ?ns=<registry>
// to requests to any host but the registry's own.
func mirrorOf(req *http.Request) string {
	return req.URL.Query().Get("ns")
}

// objectOf names what a registry request fetches ("blob sha256:0123456789ab…").
func objectOf(req *http.Request) string {
	p := req.URL.Path
	for _, kind := range []string{"blobs", "manifests"} {
		if i := strings.LastIndex(p, "/"+kind+"/"); i >= 0 {
			ref := p[i+len(kind)+2:]
			if alg, hex, ok := strings.Cut(ref, ":"); ok && len(hex) > 12 {
				ref = alg + ":" + hex[:12] + "…"
			}
			return strings.TrimSuffix(kind, "s") + " " + ref
		}
	}
	return p
}

// progress records how far a request got, from httptrace's hooks (called from the
// transport's goroutines).
type progress struct {
	dnsStart, dnsDone, connectStart, connectDone, tlsStart, tlsDone, gotConn atomic.Bool
}

func (p *progress) trace() *httptrace.ClientTrace {
	return &httptrace.ClientTrace{
		DNSStart:          func(httptrace.DNSStartInfo) { p.dnsStart.Store(true) },
		DNSDone:           func(httptrace.DNSDoneInfo) { p.dnsDone.Store(true) },
		ConnectStart:      func(string, string) { p.connectStart.Store(true) },
		ConnectDone:       func(_, _ string, err error) { p.connectDone.Store(p.connectDone.Load() || err == nil) },
		TLSHandshakeStart: func() { p.tlsStart.Store(true) },
		TLSHandshakeDone:  func(tls.ConnectionState, error) { p.tlsDone.Store(true) },
		GotConn:           func(httptrace.GotConnInfo) { p.gotConn.Store(true) },
	}
}

func (p *progress) phase() string {
	switch {
	case p.gotConn.Load():
		return phaseResponse
	case p.tlsStart.Load() && !p.tlsDone.Load():
		return phaseTLS
	case p.connectDone.Load():
		return phaseResponse // connected, not handed over yet: an HTTP proxy's CONNECT
	case p.dnsStart.Load() && !p.dnsDone.Load():
		return phaseName
	}
	return phaseConnect
}

// stallReader fails a body read that waits longer than stall for data, and cancels its
// request. Only time spent inside Read counts: a consumer that is slow to ask (containerd
// writing to its content store) is not a stalled registry; a registry that is slow but
// sends something within every stall period keeps going.
type stallReader struct {
	body   io.ReadCloser
	stall  time.Duration
	cancel context.CancelFunc
	got    int64
	timer  *time.Timer
	fired  atomic.Bool
	dead   func(got int64) error
	err    error
}

func (r *stallReader) Read(b []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.stall > 0 {
		if r.timer == nil {
			r.timer = time.AfterFunc(r.stall, r.fire)
		} else {
			r.timer.Reset(r.stall)
		}
	}
	n, err := r.body.Read(b)
	if r.timer != nil {
		r.timer.Stop()
	}
	r.got += int64(n)
	if err != nil && !errors.Is(err, io.EOF) && r.fired.Load() {
		r.err = r.dead(r.got)
		return n, r.err
	}
	return n, err
}

func (r *stallReader) fire() {
	r.fired.Store(true)
	r.cancel()
}

func (r *stallReader) Close() error {
	if r.timer != nil {
		r.timer.Stop()
	}
	err := r.body.Close()
	r.cancel()
	return err
}

// orDefault maps a configured duration: zero is def, negative is none (0).
func orDefault(d, def time.Duration) time.Duration {
	switch {
	case d == 0:
		return def
	case d < 0:
		return 0
	}
	return d
}
