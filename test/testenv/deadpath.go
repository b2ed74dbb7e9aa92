package testenv

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Hanging is a registry mirror that accepts TCP connections and never answers: a wedged
// process, or a port forward to nothing.
type Hanging struct {
	// Host is "127.0.0.1:PORT".
	Host string
	l    net.Listener
	done chan struct{}
	wg   sync.WaitGroup
	// Accepted counts the connections it took.
	Accepted atomic.Int64
}

// StartHanging listens on 127.0.0.1 and holds every connection open, silent, until Close.
func StartHanging() (*Hanging, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := &Hanging{Host: l.Addr().String(), l: l, done: make(chan struct{})}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			h.Accepted.Add(1)
			h.wg.Add(1)
			go func() {
				defer h.wg.Done()
				<-h.done
				_ = c.Close()
			}()
		}
	}()
	return h, nil
}

// URL is "http://127.0.0.1:PORT".
func (h *Hanging) URL() string { return "http://" + h.Host }

// Close drops every held connection and stops listening.
func (h *Hanging) Close() error {
	close(h.done)
	err := h.l.Close()
	h.wg.Wait()
	return err
}

// ProxyOptions say how a Proxy misbehaves.
type ProxyOptions struct {
	// StallAfter, if > 0, stops every blob body after that many bytes: the headers (with
	// the full Content-Length) and those bytes are sent, then nothing, the connection open.
	StallAfter int64
	// Rate, if > 0, sends blob bodies at about that many bytes per second.
	Rate int64
	// FailFirst answers the first FailFirst requests with 503 Service Unavailable.
	FailFirst int64
}

// Proxy is an HTTP registry mirror in front of an upstream registry that forwards
// manifests as they are and misbehaves on blob bodies (or on the first requests) as
// ProxyOptions say.
type Proxy struct {
	// Host is "127.0.0.1:PORT".
	Host     string
	upstream string
	opts     ProxyOptions
	server   *http.Server
	done     chan struct{}
	// Requests counts the requests received; Failed those answered 503; Stalled the blob
	// bodies it stopped.
	Requests, Failed, Stalled atomic.Int64
}

// StartProxy serves a Proxy for upstream ("http://127.0.0.1:PORT") on 127.0.0.1.
func StartProxy(upstream string, o ProxyOptions) (*Proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{Host: l.Addr().String(), upstream: strings.TrimSuffix(upstream, "/"), opts: o, done: make(chan struct{})}
	p.server = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.server.Serve(l) }()
	return p, nil
}

// URL is "http://127.0.0.1:PORT".
func (p *Proxy) URL() string { return "http://" + p.Host }

// Close releases stalled bodies and stops serving.
func (p *Proxy) Close() error {
	close(p.done)
	return p.server.Close()
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if n := p.Requests.Add(1); n <= p.opts.FailFirst {
		p.Failed.Add(1)
		http.Error(w, "upstream busy", http.StatusServiceUnavailable)
		return
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, p.upstream+r.URL.RequestURI(), nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	req.Header = r.Header.Clone()
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	if r.Method != http.MethodGet || resp.StatusCode != http.StatusOK || !strings.Contains(r.URL.Path, "/blobs/") {
		_, _ = io.Copy(w, resp.Body)
		return
	}
	p.copyBlob(r.Context(), w, resp.Body)
}

// copyBlob sends body at the configured rate, stopping after StallAfter bytes.
func (p *Proxy) copyBlob(ctx context.Context, w http.ResponseWriter, body io.Reader) {
	fl, _ := w.(http.Flusher)
	const tick = 20 * time.Millisecond
	chunk := int64(32 << 10)
	if p.opts.Rate > 0 {
		chunk = max(1, p.opts.Rate*int64(tick)/int64(time.Second))
	}
	var sent int64
	buf := make([]byte, chunk)
	for {
		want := chunk
		if p.opts.StallAfter > 0 {
			want = min(want, p.opts.StallAfter-sent)
		}
		if want <= 0 {
			if fl != nil {
				fl.Flush()
			}
			p.Stalled.Add(1)
			select { // silent, connection open, until the client gives up
			case <-ctx.Done():
			case <-p.done:
			}
			return
		}
		n, err := io.ReadFull(body, buf[:want])
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if fl != nil {
				fl.Flush()
			}
			sent += int64(n)
		}
		if err != nil {
			return
		}
		if p.opts.Rate > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(tick):
			}
		}
	}
}

// WriteHosts writes dir/<domain>/hosts.toml listing hosts (URLs) in the order containerd
// tries them, the last also as the server, as a node with a list of mirrors is configured.
func WriteHosts(dir, domain string, hosts ...string) error {
	if len(hosts) == 0 {
		return fmt.Errorf("no hosts for %s", domain)
	}
	d := filepath.Join(dir, domain)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "server = %q\n", hosts[len(hosts)-1])
	for _, h := range hosts {
		fmt.Fprintf(&b, "\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", h)
	}
	return os.WriteFile(filepath.Join(d, "hosts.toml"), []byte(b.String()), 0o644)
}
