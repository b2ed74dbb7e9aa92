package cache_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/precache/precache/internal/cache"
	"github.com/precache/precache/internal/cache/cachetest"
	"github.com/precache/precache/internal/manifest"
)

// TestEnsureDoesNotRetryDeadPaths: a registry that did not answer in time (ErrDeadPath,
// which also reads as ErrUnavailable) is asked once, at resolve or at fetch; the error
// keeps both sentinels and its reason, and nothing is recorded.
func TestEnsureDoesNotRetryDeadPaths(t *testing.T) {
	t.Parallel()
	const ref = "docker.io/calico/node:v3.28.1"
	dead := fmt.Errorf("%w (%w): registry mirror 127.0.0.1:5000 (for docker.io) accepted the connection but sent no response within 2s",
		cache.ErrUnavailable, cache.ErrDeadPath)
	for _, step := range []string{"resolve", "fetch"} {
		t.Run(step, func(t *testing.T) {
			t.Parallel()
			f := cachetest.NewFake()
			f.Publish(ref)
			fail := func(string, int) error { return dead }
			if step == "resolve" {
				f.FailResolve = fail
			} else {
				f.FailFetch = fail
			}
			e := cache.NewEnsurer(f, cache.Options{Retry: cache.Retry{Attempts: 4, Initial: time.Millisecond, Max: time.Millisecond}})
			results, err := e.Ensure(t.Context(), []manifest.Image{{Ref: manifest.MustParseRef(ref), Source: "test"}})
			if !errors.Is(err, cache.ErrDeadPath) || !errors.Is(results[0].Err, cache.ErrUnavailable) {
				t.Fatalf("Ensure error = %v, want ErrDeadPath and ErrUnavailable", err)
			}
			if !strings.Contains(results[0].Err.Error(), "sent no response within 2s") {
				t.Errorf("Result.Err = %q, want the reason", results[0].Err)
			}
			tries := 0
			for _, c := range f.Calls() {
				if strings.HasPrefix(c, step+" ") {
					tries++
				}
			}
			if tries != 1 {
				t.Errorf("%d %s calls, want 1: %q", tries, step, f.Calls())
			}
			if rec, err := f.Image(t.Context(), ref); !errors.Is(err, cache.ErrNotFound) {
				t.Errorf("record %s = %+v, %v; want none", ref, rec, err)
			}
			if n := f.OpenLeases(); n != 0 {
				t.Errorf("%d leases left open", n)
			}
		})
	}
}
