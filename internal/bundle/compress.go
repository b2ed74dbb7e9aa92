package bundle

import (
	"bufio"
	"bytes"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

var (
	magicGzip = []byte{0x1f, 0x8b}
	magicZstd = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

func sniff(head []byte) string {
	switch {
	case bytes.HasPrefix(head, magicGzip):
		return "gzip"
	case bytes.HasPrefix(head, magicZstd):
		return "zstd"
	}
	return ""
}

// decompress detects gzip or zstd from the first bytes (never the file name) and returns
// the plain stream.
func decompress(r io.Reader) (io.ReadCloser, string, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	head, err := br.Peek(4)
	if len(head) == 0 {
		if err == nil || err == io.EOF {
			return nil, "", invalid("empty file")
		}
		return nil, "", fmt.Errorf("reading bundle: %w", err)
	}
	switch sniff(head) {
	case "gzip":
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, "", invalid("gzip: %v", err)
		}
		return zr, "gzip", nil
	case "zstd":
		// The window cap keeps a hostile frame from making the decoder allocate gigabytes.
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(128<<20), zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, "", invalid("zstd: %v", err)
		}
		return zr.IOReadCloser(), "zstd", nil
	}
	return io.NopCloser(br), "none", nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// bombError stops a bundle that decompresses far beyond its size.
type bombError struct{ in, out, ratio int64 }

func (e *bombError) Error() string {
	return fmt.Sprintf("%s: decompresses to more than %d× its size (%d bytes from %d): a compression bomb, not an image bundle", ErrInvalid, e.ratio, e.out, e.in)
}

func (e *bombError) Unwrap() error { return ErrInvalid }

// bombGuard fails the stream once its output exceeds ratio × the compressed input
// (after a floor: small files legitimately compress well).
type bombGuard struct {
	r     io.Reader
	in    *countingReader
	out   int64
	ratio int64
}

func (b *bombGuard) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.out += int64(n)
	if b.out > bombFloor && b.out > b.ratio*b.in.n {
		return n, &bombError{in: b.in.n, out: b.out, ratio: b.ratio}
	}
	return n, err
}
