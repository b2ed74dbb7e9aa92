package agent

import (
	"slices"
	"testing"
)

func TestCodeSpans(t *testing.T) {
	t.Parallel()
	const exe = "/usr/local/bin/precache"
	smaps := func(lines ...string) []byte {
		var b []byte
		for _, l := range lines {
			b = append(b, l+"\n"...)
		}
		return b
	}
	fields := func(anon, swap string) []string {
		return []string{"Size:               29196 kB", "Rss:                 2048 kB", "Anonymous:            " + anon + " kB", "Swap:                 " + swap + " kB", "VmFlags: rd ex mr mw me"}
	}
	mapping := func(header, anon, swap string) []string { return append([]string{header}, fields(anon, swap)...) }
	join := func(parts ...[]string) []byte {
		var all []string
		for _, p := range parts {
			all = append(all, p...)
		}
		return smaps(all...)
	}
	tests := []struct {
		name  string
		smaps []byte
		want  []codeSpan
	}{
		{
			name: "code and read-only data of the binary; not its data, not other files, not anonymous memory",
			smaps: join(
				mapping("00400000-02083000 r-xp 00000000 fe:00 1234                               /usr/local/bin/precache", "0", "0"),
				mapping("02083000-043ba000 r--p 01c83000 fe:00 1234                               /usr/local/bin/precache", "0", "0"),
				mapping("043ba000-04476000 rw-p 03fba000 fe:00 1234                               /usr/local/bin/precache", "688", "0"),
				mapping("04476000-064c8000 rw-p 00000000 00:00 0", "160", "0"),
				mapping("7f78c83bc000-7f78c8700000 r-xp 00000000 fe:00 99                   /usr/lib/libc.so.6", "0", "0"),
				mapping("7ffd1000-7ffd2000 r-xp 00000000 00:00 0                              [vdso]", "0", "0"),
			),
			want: []codeSpan{{start: 0x400000, end: 0x2083000}, {start: 0x2083000, end: 0x43ba000}},
		},
		{
			name: "pages written before the mapping became read-only are the process's own",
			smaps: join(
				mapping("00400000-00500000 r--p 00000000 fe:00 1234 /usr/local/bin/precache", "0", "0"),
				mapping("00500000-00600000 r--p 00100000 fe:00 1234 /usr/local/bin/precache", "8", "0"),
				mapping("00600000-00700000 r--p 00200000 fe:00 1234 /usr/local/bin/precache", "0", "4"),
			),
			want: []codeSpan{{start: 0x400000, end: 0x500000}, {start: 0x500000, end: 0x600000, private: true}, {start: 0x600000, end: 0x700000, private: true}},
		},
		{
			name:  "a binary replaced since it started",
			smaps: join(mapping("00400000-00500000 r-xp 00000000 fe:00 1234 /usr/local/bin/precache (deleted)", "0", "0")),
			want:  []codeSpan{{start: 0x400000, end: 0x500000}},
		},
		{
			name: "a path with spaces, and a path that only starts like the binary's",
			smaps: join(
				mapping("00400000-00500000 r-xp 00000000 fe:00 1234 /usr/local/bin/precache old", "0", "0"),
				mapping("00500000-00600000 r-xp 00000000 fe:00 1234 /usr/local/bin/precache", "0", "0"),
			),
			want: []codeSpan{{start: 0x500000, end: 0x600000}},
		},
		{
			name:  "nothing of the binary",
			smaps: join(mapping("7f78c83bc000-7f78c8700000 r-xp 00000000 fe:00 99 /usr/lib/libc.so.6", "0", "0")),
		},
		{
			name:  "empty",
			smaps: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := codeSpans(tt.smaps, exe)
			if !slices.Equal(got, tt.want) {
				t.Errorf("codeSpans = %+v, want %+v", got, tt.want)
			}
		})
	}
}
