package containerd

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/precache/precache/internal/cache"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		err      error
		sentinel error
		retried  bool // ErrUnavailable and not ErrDeadPath: the core tries again
		says     string
	}{
		{"unknown name: not worth retrying", &net.DNSError{Err: "no such host", Name: "registry.example", IsNotFound: true}, nil, false, "does not resolve"},
		{"DNS timeout: a dead path", &net.DNSError{Err: "i/o timeout", Name: "registry.example", IsTimeout: true}, cache.ErrDeadPath, false, ""},
		{"401", remoteerrors.ErrUnexpectedStatus{Status: "401 Unauthorized", StatusCode: 401}, cache.ErrUnauthorized, false, ""},
		{"404", remoteerrors.ErrUnexpectedStatus{Status: "404 Not Found", StatusCode: 404}, cache.ErrNotFound, false, ""},
		{"503", remoteerrors.ErrUnexpectedStatus{Status: "503", StatusCode: 503}, cache.ErrUnavailable, true, ""},
		{"429", remoteerrors.ErrUnexpectedStatus{Status: "429", StatusCode: 429}, cache.ErrUnavailable, true, ""},
		{"connection refused", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, cache.ErrUnavailable, true, "connection refused"},
		{"connection reset", &url.Error{Op: "Get", URL: "http://r/v2/", Err: &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}}, cache.ErrUnavailable, true, "reset"},
		{"dial timeout (hosts.toml dial_timeout)", &net.OpError{Op: "dial", Net: "tcp", Err: timeoutErr{}}, cache.ErrDeadPath, false, ""},
		{"no answer within --registry-timeout", fmt.Errorf("failed to do request: %w", &url.Error{Op: "Head", URL: "http://127.0.0.1:5000/v2/", Err: &DeadPathError{Host: "127.0.0.1:5000", Mirror: "docker.io", Phase: phaseResponse, After: 2 * time.Second}}),
			cache.ErrDeadPath, false, "registry mirror 127.0.0.1:5000 (for docker.io) accepted the connection but sent no response within 2s"},
		{"stalled download", fmt.Errorf("failed to copy: %w", &DeadPathError{Host: "quay.io", Phase: phaseStall, After: 10 * time.Second, Object: "blob sha256:0123", Got: 10, Size: 20}),
			cache.ErrDeadPath, false, "registry quay.io stalled: sent no data for 10s in the middle of blob sha256:0123 (10 of 20 bytes received"},
		{"not found from containerd", fmt.Errorf("resolving: %w", errdefs.ErrNotFound), cache.ErrNotFound, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := classify(tt.err)
			if tt.sentinel != nil && !errors.Is(got, tt.sentinel) {
				t.Errorf("classify(%v) = %v, want %v", tt.err, got, tt.sentinel)
			}
			if retried := errors.Is(got, cache.ErrUnavailable) && !errors.Is(got, cache.ErrDeadPath); retried != tt.retried {
				t.Errorf("classify(%v) = %v: retried = %t, want %t", tt.err, got, retried, tt.retried)
			}
			if errors.Is(got, cache.ErrDeadPath) && !errors.Is(got, cache.ErrUnavailable) {
				t.Errorf("classify(%v) = %v: a dead path must still read as unavailable", tt.err, got)
			}
			if errdefs.IsUnavailable(got) {
				t.Errorf("classify(%v) = %v: a registry error must not read as containerd gone", tt.err, got)
			}
			if tt.says != "" && !strings.Contains(got.Error(), tt.says) {
				t.Errorf("classify(%v) = %q, want it to say %q", tt.err, got, tt.says)
			}
		})
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestGRPCCause(t *testing.T) {
	t.Parallel()
	err := status.Error(codes.Unavailable, `connection error: desc = "transport: Error while dialing: dial unix /run/containerd/containerd.sock: connect: connection refused"`)
	got := grpcCause(err)
	if got.Error() != "unavailable: dial unix /run/containerd/containerd.sock: connect: connection refused" || !errdefs.IsUnavailable(got) {
		t.Fatalf("grpcCause = %q", got)
	}
	other := errors.New("something else")
	if got := grpcCause(other); got != other { //nolint:errorlint // the very same error value, unwrapped

		t.Fatal("grpcCause changed a non-gRPC error")
	}
}

// TestNoSpace: a full disk crosses gRPC as text only; it must read as ErrNoSpace, from a
// content write and from a pull alike, and nothing else may.
func TestNoSpace(t *testing.T) {
	full := status.Error(codes.Unknown, "failed to open writer: write /var/lib/containerd/io.containerd.content.v1.content/ingest/x/total: no space left on device")
	for name, classifyFn := range map[string]func(error) error{"store": classifyStore, "pull": classify} {
		if err := classifyFn(full); !errors.Is(err, cache.ErrNoSpace) {
			t.Errorf("%s: classify(%v) = %v, want ErrNoSpace", name, full, err)
		}
		if err := classifyFn(errors.New("connection reset by peer")); errors.Is(err, cache.ErrNoSpace) {
			t.Errorf("%s: a reset classified as a full disk", name)
		}
	}
}
