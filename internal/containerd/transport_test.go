package containerd

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/precache/precache/internal/cache"
)

// hanging accepts connections and never answers.
func hanging(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { <-done; c.Close() }()
		}
	}()
	return l.Addr().String()
}

func newDeadline(answer, stall time.Duration) *deadlineTransport {
	return &deadlineTransport{next: http.DefaultTransport.(*http.Transport).Clone(), answer: answer, stall: stall, dead: newDeadHosts()}
}

func get(t *testing.T, rt http.RoundTripper, url string) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return rt.RoundTrip(req)
}

// TestDeadlineNoResponse: a host that accepts and never answers fails at the deadline,
// named as a mirror with what it did not do, classified as a dead path (not retried);
// the next request to it fails at once.
func TestDeadlineNoResponse(t *testing.T) {
	t.Parallel()
	host := hanging(t)
	rt := newDeadline(200*time.Millisecond, time.Second)
	start := time.Now()
	_, err := get(t, rt, "http://"+host+"/v2/calico/node/manifests/v3.28.1?ns=docker.io")
	took := time.Since(start)
	var dead *DeadPathError
	if !errors.As(err, &dead) || dead.Phase != phaseResponse {
		t.Fatalf("err = %v, want a DeadPathError in phase %s", err, phaseResponse)
	}
	if took > time.Second {
		t.Errorf("took %s, want about the 200ms deadline", took)
	}
	want := "registry mirror " + host + " (for docker.io) accepted the connection but sent no response within 200ms"
	if !strings.Contains(err.Error(), want) {
		t.Errorf("err = %q, want it to say %q", err, want)
	}
	c := classify(err)
	if !errors.Is(c, cache.ErrDeadPath) || !errors.Is(c, cache.ErrUnavailable) {
		t.Errorf("classify = %v, want ErrDeadPath and ErrUnavailable", c)
	}

	start = time.Now()
	_, err = get(t, rt, "http://"+host+"/v2/calico/node/blobs/sha256:0123")
	if !errors.As(err, &dead) || time.Since(start) > 50*time.Millisecond || !strings.Contains(err.Error(), "not asked again") {
		t.Errorf("second request to a dead host: %v after %s, want it skipped at once", err, time.Since(start))
	}
}

// TestDeadlineConnect: a connection that is never established (here: the dial itself
// hangs) is reported as such.
func TestDeadlineConnect(t *testing.T) {
	t.Parallel()
	rt := newDeadline(150*time.Millisecond, time.Second)
	rt.next.(*http.Transport).DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	_, err := get(t, rt, "http://10.255.0.2:5000/v2/")
	var dead *DeadPathError
	if !errors.As(err, &dead) || dead.Phase != phaseConnect || !strings.Contains(err.Error(), "registry 10.255.0.2:5000 did not answer: no connection within 150ms") {
		t.Fatalf("err = %v, want no connection", err)
	}
}

// TestDeadlineTLS: a TLS handshake that never finishes is reported in words containerd's
// http fallback recognises, and only https is marked dead on that host.
func TestDeadlineTLS(t *testing.T) {
	t.Parallel()
	host := hanging(t)
	rt := newDeadline(150*time.Millisecond, time.Second)
	_, err := get(t, rt, "https://"+host+"/v2/")
	var dead *DeadPathError
	if !errors.As(err, &dead) || dead.Phase != phaseTLS || !strings.Contains(err.Error(), "TLS handshake timeout") {
		t.Fatalf("err = %v, want an unfinished TLS handshake", err)
	}
	if rt.dead.get("https://"+host) == nil || rt.dead.get("http://"+host) != nil {
		t.Error("want https://HOST skipped from now on, and http://HOST still tried")
	}
}

// TestDeadHostsExpire: a dead host is asked again after deadHostFor.
func TestDeadHostsExpire(t *testing.T) {
	t.Parallel()
	d := newDeadHosts()
	now := time.Now()
	d.now = func() time.Time { return now }
	d.mark("https://h:1", &DeadPathError{Host: "h:1", Phase: phaseTLS, After: time.Second})
	if d.get("https://h:1") == nil || d.get("https://other:1") != nil || d.get("http://h:1") != nil {
		t.Fatal("dead host not remembered, or another host (or scheme) taken for it")
	}
	now = now.Add(deadHostFor)
	if err := d.get("https://h:1"); err != nil {
		t.Fatalf("dead host still skipped after %s: %v", deadHostFor, err)
	}
}

// TestStall: a body that stops arriving fails after the stall timeout, naming the blob
// and how far it got; a slow body that keeps arriving is read to the end although it takes
// several stall periods; a consumer that is slow to read is not a stall.
func TestStall(t *testing.T) {
	t.Parallel()
	const size = 64 << 10
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "65536")
		chunk := make([]byte, 4<<10)
		fl := w.(http.Flusher)
		for sent := 0; sent < size; sent += len(chunk) {
			switch {
			case strings.Contains(r.URL.Path, "stall") && sent == 16<<10:
				<-r.Context().Done()
				return
			case strings.Contains(r.URL.Path, "slow"):
				time.Sleep(40 * time.Millisecond) // 16 chunks: 640 ms in all
			}
			if _, err := w.Write(chunk); err != nil {
				return
			}
			fl.Flush()
		}
	}))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")

	t.Run("stalled", func(t *testing.T) {
		t.Parallel()
		rt := newDeadline(time.Second, 200*time.Millisecond)
		resp, err := get(t, rt, srv.URL+"/v2/x/stall/blobs/sha256:"+strings.Repeat("ab", 32)+"?ns=quay.io")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		start := time.Now()
		n, err := io.Copy(io.Discard, resp.Body)
		var dead *DeadPathError
		if !errors.As(err, &dead) || dead.Phase != phaseStall {
			t.Fatalf("read %d bytes, err = %v; want a stall", n, err)
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("stall noticed after %s, want about 200ms", took)
		}
		want := "registry mirror " + host + " (for quay.io) stalled: sent no data for 200ms in the middle of blob sha256:abababababab… (16384 of 65536 bytes received"
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err = %q, want it to say %q", err, want)
		}
		if !errors.Is(classify(err), cache.ErrDeadPath) {
			t.Errorf("a stall is not classified as a dead path: %v", classify(err))
		}
	})
	t.Run("slow but moving", func(t *testing.T) {
		t.Parallel()
		rt := newDeadline(time.Second, 200*time.Millisecond)
		resp, err := get(t, rt, srv.URL+"/slow")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if n, err := io.Copy(io.Discard, resp.Body); err != nil || n != size {
			t.Fatalf("read %d bytes, err = %v; want all %d", n, err, size)
		}
	})
	t.Run("slow consumer", func(t *testing.T) {
		t.Parallel()
		rt := newDeadline(time.Second, 100*time.Millisecond)
		resp, err := get(t, rt, srv.URL+"/fast")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		buf := make([]byte, 16<<10)
		var n int
		for {
			m, err := resp.Body.Read(buf)
			n += m
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("after %d bytes: %v", n, err)
			}
			time.Sleep(150 * time.Millisecond) // longer than the stall timeout, outside Read
		}
		if n != size {
			t.Fatalf("read %d bytes, want %d", n, size)
		}
	})
}

// TestDeadlineOff: a negative setting is no limit; zero is the default.
func TestDeadlineOff(t *testing.T) {
	t.Parallel()
	if orDefault(-1, DefaultRegistryTimeout) != 0 || orDefault(0, DefaultRegistryTimeout) != DefaultRegistryTimeout || orDefault(3*time.Second, time.Second) != 3*time.Second {
		t.Error("orDefault: negative is none, zero the default, positive itself")
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		time.Sleep(100 * time.Millisecond)
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	resp, err := get(t, newDeadline(0, 0), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if b, _ := io.ReadAll(resp.Body); string(b) != "ok" {
		t.Fatalf("body %q", b)
	}
}

// TestWithTransport: containerd calls UpdateClient for the shared client and again for a
// host's copy of it; the transport is wrapped once, with the resolver's dialer.
func TestWithTransport(t *testing.T) {
	t.Parallel()
	opts := withTransport(hostOptions("", nil), &net.Resolver{}, deadlineTransport{answer: time.Second, dead: newDeadHosts()})
	tr := &http.Transport{ResponseHeaderTimeout: 30 * time.Second, TLSHandshakeTimeout: 10 * time.Second}
	c := &http.Client{Transport: tr}
	if err := opts.UpdateClient(c); err != nil {
		t.Fatal(err)
	}
	wrapped, ok := c.Transport.(*deadlineTransport)
	if !ok || wrapped.next != tr || tr.DialContext == nil || tr.ResponseHeaderTimeout != 0 || tr.TLSHandshakeTimeout != 0 {
		t.Fatalf("transport after UpdateClient: %#v", c.Transport)
	}
	cp := *c
	if err := opts.UpdateClient(&cp); err != nil || cp.Transport != wrapped {
		t.Fatalf("a copy of an updated client was wrapped again: %v %#v", err, cp.Transport)
	}
}
