package containerd

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"

	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/precache/precache/internal/cache"
)

// classify maps registry and network errors to the core's sentinels, keeping the
// original message: the core decides on retries with errors.Is, the user reads the cause.
func classify(err error) error {
	if err == nil {
		return nil
	}
	if isNoSpace(err) {
		return fmt.Errorf("%w: %w", cache.ErrNoSpace, grpcCause(err))
	}
	var dnsErr *net.DNSError
	var status remoteerrors.ErrUnexpectedStatus
	var dead *DeadPathError
	switch {
	case errors.As(err, &dead):
		return fmt.Errorf("%w (%w): %w", cache.ErrUnavailable, cache.ErrDeadPath, err)
	case errors.As(err, &dnsErr):
		if dnsErr.IsNotFound {
			// An unknown name will not appear by retrying; fail fast.
			return fmt.Errorf("%w (the registry's name does not resolve: check the node's DNS, or a mirror in --hosts-dir)", err)
		}
		if dnsErr.IsTimeout {
			return fmt.Errorf("%w (%w): %w", cache.ErrUnavailable, cache.ErrDeadPath, err)
		}
		return fmt.Errorf("%w: %w", cache.ErrUnavailable, err)
	case errors.As(err, &status):
		switch {
		case status.StatusCode == http.StatusUnauthorized || status.StatusCode == http.StatusForbidden:
			return fmt.Errorf("%w: %w", cache.ErrUnauthorized, err)
		case status.StatusCode == http.StatusNotFound:
			return fmt.Errorf("%w: %w", cache.ErrNotFound, err)
		case status.StatusCode == http.StatusTooManyRequests || status.StatusCode >= 500:
			return fmt.Errorf("%w: %w", cache.ErrUnavailable, err)
		}
		return err
	case errdefs.IsNotFound(err):
		return fmt.Errorf("%w: %w", cache.ErrNotFound, err)
	case isTimeout(err):
		// A timeout of containerd's own (a hosts.toml dial_timeout, its header timeout when
		// --registry-timeout is off): as dead as a deadline of precache's.
		return fmt.Errorf("%w (%w): %w", cache.ErrUnavailable, cache.ErrDeadPath, err)
	case isTransientNet(err):
		return fmt.Errorf("%w: %w", cache.ErrUnavailable, err)
	}
	return grpcCause(err)
}

// isTimeout: a network operation gave up waiting.
func isTimeout(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout()
}

// isTransientNet: a network error that answered (refused, reset, closed early); worth retrying.
func isTransientNet(err error) bool {
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return true
	}
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, errdefs.ErrUnavailable)
}

// grpcCause turns a gRPC transport error into its cause ("dial unix …: connect: connection
// refused") instead of the full status dump.
func grpcCause(err error) error {
	s, ok := status.FromError(err)
	if !ok || s.Code() != codes.Unavailable {
		return err
	}
	msg := s.Message()
	if i := strings.LastIndex(msg, "dial unix"); i >= 0 {
		msg = strings.TrimRight(msg[i:], `"`)
	}
	return fmt.Errorf("%w: %s", errdefs.ErrUnavailable, msg)
}

// classifyStore maps an error of containerd's stores (content, snapshots, images).
func classifyStore(err error) error {
	if err == nil {
		return nil
	}
	if isNoSpace(err) {
		return fmt.Errorf("%w: %w", cache.ErrNoSpace, grpcCause(err))
	}
	return grpcCause(err)
}

// isNoSpace: the daemon's disk is full. It crosses gRPC as text only.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || strings.Contains(err.Error(), syscall.ENOSPC.Error())
}
