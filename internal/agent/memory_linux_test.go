package agent

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestReleaseCode hands back this test binary's code pages: they are unmapped, and the
// code still runs (every page it needs is mapped again on first touch).
func TestReleaseCode(t *testing.T) {
	before := codeRSS(t)
	if err := releaseCode(); err != nil {
		t.Fatal(err)
	}
	after := codeRSS(t)
	t.Logf("the binary's pages mapped: %d KiB before, %d KiB after", before, after)
	if after >= before {
		t.Errorf("the binary's pages mapped: %d KiB after releasing, %d KiB before", after, before)
	}
	// Code that was handed back works: parse what the process maps again.
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	if len(codeSpans(smaps, strings.TrimSuffix(exe, " (deleted)"))) == 0 {
		t.Error("no code mapping of the test binary after releasing it")
	}
}

// codeRSS is the resident size, KiB, of the test binary's read-only mappings.
func codeRSS(t *testing.T) int {
	t.Helper()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	starts := map[uint64]bool{}
	for _, s := range codeSpans(smaps, strings.TrimSuffix(exe, " (deleted)")) {
		starts[uint64(s.start)] = true
	}
	total, in := 0, false
	for _, line := range strings.Split(string(smaps), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if lo, _, ok := strings.Cut(f[0], "-"); ok && !strings.HasSuffix(f[0], ":") {
			start, err := strconv.ParseUint(lo, 16, 64)
			in = err == nil && starts[start]
			continue
		}
		if in && f[0] == "Rss:" && len(f) >= 2 {
			kb, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatal(err)
			}
			total += kb
		}
	}
	return total
}
