package agent

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// madvPageout is MADV_PAGEOUT (Linux 5.4), which the syscall package predates: reclaim
// the range now. A clean file page leaves the page cache too, unless the kernel keeps it
// (another process maps it, or it is part of a larger folio).
const madvPageout = 21

// releaseCode hands back the pages of the running binary's code and read-only data: it
// asks the kernel to reclaim them (MADV_PAGEOUT), then unmaps what it kept
// (MADV_DONTNEED: the page cache still holds those, a later access maps them again without
// reading the file). Kernels before 5.4 do not know MADV_PAGEOUT; there only the unmapping
// happens.
func releaseCode() error {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return err
	}
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return err
	}
	var errs []error
	for _, s := range codeSpans(smaps, strings.TrimSuffix(exe, " (deleted)")) {
		if err := madvise(s, madvPageout); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, err)
		}
		if !s.private {
			if err := madvise(s, syscall.MADV_DONTNEED); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func madvise(s codeSpan, advice int) error {
	if _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, s.start, s.end-s.start, uintptr(advice)); errno != 0 {
		return fmt.Errorf("madvise(%#x-%#x, %d): %w", s.start, s.end, advice, errno)
	}
	return nil
}
