package agent

import (
	"bufio"
	"bytes"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
)

// releaseMemory gives back what a reconcile leaves behind, for an agent that will mostly
// sit idle until the next upgrade: the heap a pull used, and the pages of its own binary
// that were mapped to run it.
//
// The heap: the first collection moves the copy buffers pooled by containerd's content
// package and gRPC (sync.Pool: ~30 MiB after a pull through the client-side path) to the
// pools' victim caches, the second (FreeOSMemory's) frees them and returns the pages to
// the kernel.
//
// The binary: starting precache runs the package initialisers of everything the one
// binary carries (client-go's API groups, containerd's client, Prometheus…), and a
// reconcile runs much of the rest, so most of its code and read-only data end up mapped:
// several times the heap. They are clean pages of the executable; releaseCode hands them
// back, and what idle work uses (the watches, the GC, the probes and /metrics) is mapped
// again on first touch.
func releaseMemory() error {
	runtime.GC()
	debug.FreeOSMemory()
	return releaseCode()
}

// codeSpan is a read-only mapping of the executable, [start, end).
type codeSpan struct {
	start, end uintptr
	// private says some of its pages are the process's own copies (Anonymous or Swap in
	// smaps: written before the mapping was made read-only, as a dynamic loader does with
	// relocations, or by a debugger's breakpoint): dropping those would lose what was
	// written, so such a span is only offered for reclaim.
	private bool
}

// codeSpans returns the read-only mappings of exe in a /proc/PID/smaps listing: its code
// and read-only data. Its writable data is left alone: small, and touched all the time.
func codeSpans(smaps []byte, exe string) []codeSpan {
	var (
		out []codeSpan
		cur *codeSpan
	)
	sc := bufio.NewScanner(bytes.NewReader(smaps))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if lo, hi, ok := strings.Cut(f[0], "-"); ok && len(f) >= 5 && !strings.HasSuffix(f[0], ":") {
			// A mapping: address perms offset dev inode [pathname, which may hold spaces,
			// and ends in " (deleted)" when the file was replaced since].
			cur = nil
			if len(f) < 6 || len(f[1]) < 2 || f[1][0] != 'r' || f[1][1] != '-' {
				continue
			}
			if strings.TrimSuffix(strings.Join(f[5:], " "), " (deleted)") != exe {
				continue
			}
			start, err1 := strconv.ParseUint(lo, 16, 64)
			end, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 != nil || err2 != nil || end <= start {
				continue
			}
			out = append(out, codeSpan{start: uintptr(start), end: uintptr(end)})
			cur = &out[len(out)-1]
			continue
		}
		if cur != nil && (f[0] == "Anonymous:" || f[0] == "Swap:") && len(f) >= 2 && f[1] != "0" {
			cur.private = true
		}
	}
	return out
}
