package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

func TestDecodeLock(t *testing.T) {
	t.Parallel()
	d1 := digest.FromString("node")
	d2 := digest.FromString("cni")
	tests := []struct {
		name string
		in   string
		want map[string]digest.Digest
	}{
		{
			name: "normalised keys",
			in:   `{"version":1,"images":{"docker.io/calico/node:v3.28.1":"` + d1.String() + `","calico/cni:v3.28.1":"` + d2.String() + `"}}`,
			want: map[string]digest.Digest{"docker.io/calico/node:v3.28.1": d1, "docker.io/calico/cni:v3.28.1": d2},
		},
		{
			name: "implicit latest and library",
			in:   `{"version":1,"images":{"busybox":"` + d1.String() + `"}}`,
			want: map[string]digest.Digest{"docker.io/library/busybox:latest": d1},
		},
		{
			name: "key with tag and matching digest is keyed by tag",
			in:   `{"version":1,"images":{"calico/node:v3.28.1@` + d1.String() + `":"` + d1.String() + `"}}`,
			want: map[string]digest.Digest{"docker.io/calico/node:v3.28.1": d1},
		},
		{
			name: "digest-only key",
			in:   `{"version":1,"images":{"calico/node@` + d1.String() + `":"` + d1.String() + `"}}`,
			want: map[string]digest.Digest{"docker.io/calico/node@" + d1.String(): d1},
		},
		{
			name: "same reference twice with the same digest",
			in:   `{"version":1,"images":{"calico/node:v3.28.1":"` + d1.String() + `","docker.io/calico/node:v3.28.1":"` + d1.String() + `"}}`,
			want: map[string]digest.Digest{"docker.io/calico/node:v3.28.1": d1},
		},
		{
			name: "no images",
			in:   `{"version":1,"images":{}}`,
			want: map[string]digest.Digest{},
		},
		{
			name: "images missing",
			in:   `{"version":1}`,
			want: map[string]digest.Digest{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l, err := DecodeLock(strings.NewReader(tt.in))
			if err != nil {
				t.Fatalf("DecodeLock: %v", err)
			}
			if l.Version != LockVersion {
				t.Errorf("Version = %d, want %d", l.Version, LockVersion)
			}
			if !reflect.DeepEqual(l.Images, tt.want) {
				t.Errorf("Images = %v, want %v", l.Images, tt.want)
			}
		})
	}
}

func TestDecodeLockErrors(t *testing.T) {
	t.Parallel()
	d1 := digest.FromString("node")
	d2 := digest.FromString("other")
	tests := []struct {
		name    string
		in      string
		wantErr []string
	}{
		{name: "wrong version", in: `{"version":2,"images":{}}`, wantErr: []string{"unsupported version 2", "version 1"}},
		{name: "no version", in: `{"images":{}}`, wantErr: []string{"unsupported version 0"}},
		{name: "bad JSON", in: `{"version":1,"images":`, wantErr: []string{"not a precache lock"}},
		{name: "not an object", in: `["calico/node:v3.28.1"]`, wantErr: []string{"not a precache lock"}},
		{name: "empty", in: ``, wantErr: []string{"not a precache lock"}},
		{name: "digest not a string", in: `{"version":1,"images":{"calico/node:v3.28.1":42}}`, wantErr: []string{"not a precache lock"}},
		{name: "invalid digest", in: `{"version":1,"images":{"calico/node:v3.28.1":"sha256:abc"}}`, wantErr: []string{"calico/node:v3.28.1", `invalid digest "sha256:abc"`}},
		{name: "empty digest", in: `{"version":1,"images":{"calico/node:v3.28.1":""}}`, wantErr: []string{"invalid digest"}},
		{name: "invalid key", in: `{"version":1,"images":{"calico/node:":"` + d1.String() + `"}}`, wantErr: []string{"invalid image reference"}},
		{
			name:    "conflicting duplicate keys",
			in:      `{"version":1,"images":{"calico/node:v3.28.1":"` + d1.String() + `","docker.io/calico/node:v3.28.1":"` + d2.String() + `"}}`,
			wantErr: []string{"docker.io/calico/node:v3.28.1 appears twice", d1.String(), d2.String()},
		},
		{
			name:    "key digest differs from value",
			in:      `{"version":1,"images":{"calico/node:v3.28.1@` + d1.String() + `":"` + d2.String() + `"}}`,
			wantErr: []string{"the key names digest " + d1.String() + " but the value is " + d2.String()},
		},
		{
			name:    "digest-only key differs from value",
			in:      `{"version":1,"images":{"calico/node@` + d1.String() + `":"` + d2.String() + `"}}`,
			wantErr: []string{"the key names digest"},
		},
		{name: "too large", in: `{"version":1,"images":{}}` + strings.Repeat(" ", maxLockSize), wantErr: []string{"larger than"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l, err := DecodeLock(strings.NewReader(tt.in))
			if err == nil {
				t.Fatalf("DecodeLock = %+v, want an error", l)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("DecodeLock error = %q, want it to contain %q", err, want)
				}
			}
		})
	}
}

func TestLockEncodeRoundTrip(t *testing.T) {
	t.Parallel()
	var l Lock // zero Version: Encode still writes the current one
	l.Set(MustParseRef("calico/node:v3.28.1"), digest.FromString("node"))
	l.Set(MustParseRef("quay.io/calico/cni:v3.31.0"), digest.FromString("cni"))
	l.Set(MustParseRef("busybox@"+testDigest.String()), testDigest)

	var buf bytes.Buffer
	if err := l.Encode(&buf); err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Version int               `json:"version"`
		Images  map[string]string `json:"images"`
	}
	if err := json.Unmarshal(buf.Bytes(), &raw); err != nil {
		t.Fatalf("Encode wrote invalid JSON: %v\n%s", err, buf.String())
	}
	if raw.Version != LockVersion {
		t.Errorf("encoded version = %d, want %d", raw.Version, LockVersion)
	}
	if !strings.Contains(buf.String(), "\n  \"images\": {\n    \"docker.io/calico/node:v3.28.1\"") {
		t.Errorf("Encode output is not indented with sorted keys:\n%s", buf.String())
	}

	got, err := DecodeLock(&buf)
	if err != nil {
		t.Fatalf("DecodeLock(Encode): %v", err)
	}
	want := &Lock{Version: LockVersion, Images: l.Images}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("round trip = %+v, want %+v", got, want)
	}
}

func TestReadLock(t *testing.T) {
	t.Parallel()
	d := digest.FromString("node")
	path := writeFile(t, "precache.lock", `{"version":1,"images":{"calico/node:v3.28.1":"`+d.String()+`"}}`)
	l, err := ReadLock(path)
	if err != nil {
		t.Fatalf("ReadLock: %v", err)
	}
	if got, ok := l.Lookup(MustParseRef("docker.io/calico/node:v3.28.1")); !ok || got != d {
		t.Errorf("Lookup = %q, %t, want %q, true", got, ok, d)
	}

	bad := writeFile(t, "bad.lock", `{"version":3}`)
	if _, err := ReadLock(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("ReadLock(bad) error = %v, want it to name %s", err, bad)
	}
	if _, err := ReadLock(filepath.Join(t.TempDir(), "absent.lock")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadLock(absent) error = %v, want a not-exist error", err)
	}
}

func TestLockLookup(t *testing.T) {
	t.Parallel()
	d := digest.FromString("node")
	var l Lock
	l.Set(MustParseRef("calico/node:v3.28.1@"+d.String()), d)
	l.Set(MustParseRef("calico/cni@"+testDigest.String()), testDigest)

	if got, want := l.Refs(), []string{"docker.io/calico/cni@" + testDigest.String(), "docker.io/calico/node:v3.28.1"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Refs = %v, want %v", got, want)
	}
	tests := []struct {
		name   string
		ref    string
		want   digest.Digest
		wantOK bool
	}{
		{name: "tag form", ref: "docker.io/calico/node:v3.28.1", want: d, wantOK: true},
		{name: "familiar tag form", ref: "calico/node:v3.28.1", want: d, wantOK: true},
		{name: "tag and digest", ref: "calico/node:v3.28.1@" + d.String(), want: d, wantOK: true},
		{name: "digest form", ref: "calico/cni@" + testDigest.String(), want: testDigest, wantOK: true},
		{name: "other tag", ref: "calico/node:v3.28.2"},
		{name: "other registry", ref: "quay.io/calico/node:v3.28.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, ok := l.Lookup(MustParseRef(tt.ref))
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("Lookup(%s) = %q, %t, want %q, %t", tt.ref, got, ok, tt.want, tt.wantOK)
			}
		})
	}

	var nilLock *Lock
	if got, ok := nilLock.Lookup(MustParseRef("calico/node:v3.28.1")); ok || got != "" {
		t.Errorf("nil Lock Lookup = %q, %t, want nothing", got, ok)
	}
}

func TestApplyLock(t *testing.T) {
	t.Parallel()
	dNode := digest.FromString("node")
	dCNI := digest.FromString("cni")
	other := digest.FromString("other")
	lock := &Lock{Version: LockVersion, Images: map[string]digest.Digest{
		"docker.io/calico/node:v3.28.1": dNode,
		"docker.io/calico/cni:v3.28.1":  dCNI,
		"quay.io/calico/node:v3.28.1":   dNode,
	}}
	img := func(ref string) Image { return Image{Ref: MustParseRef(ref), Source: "catalog"} }
	locked := func(ref string, d digest.Digest) Image {
		i := img(ref)
		i.Ref.Digest, i.DigestSource = d, "precache.lock"
		return i
	}
	withDigest := func(ref string, d digest.Digest) Image {
		i := img(ref)
		i.Ref.Digest = d
		return i
	}
	byOwnDigest := func(ref string, d digest.Digest) Image {
		i := withDigest(ref, d)
		i.DigestSource, i.ByDigest, i.TagSource = "DaemonSet calico-system/calico-node", true, "ImageSet calico-v3.28.1"
		return i
	}
	tests := []struct {
		name    string
		set     []Image
		want    []Image
		wantErr []string
	}{
		{
			name: "sets digest and source",
			set:  []Image{img("calico/node:v3.28.1"), img("calico/cni:v3.28.1")},
			want: []Image{locked("calico/node:v3.28.1", dNode), locked("calico/cni:v3.28.1", dCNI)},
		},
		{
			name: "unknown references untouched",
			set:  []Image{img("calico/typha:v3.28.1"), img("calico/node:v3.28.1"), img("calico/node:v3.28.2")},
			want: []Image{img("calico/typha:v3.28.1"), locked("calico/node:v3.28.1", dNode), img("calico/node:v3.28.2")},
		},
		{
			name: "reference digest that agrees with the lock",
			set:  []Image{withDigest("calico/node:v3.28.1", dNode)},
			want: []Image{locked("calico/node:v3.28.1", dNode)},
		},
		{
			// Discovery gives an operator's name@sha256:… its release's tag; the lock keyed
			// by that tag must not turn the pull by digest into a pull by tag.
			name: "a reference pulled by its own digest stays pulled by it when the lock agrees",
			set:  []Image{byOwnDigest("quay.io/calico/node:v3.28.1", dNode)},
			want: []Image{byOwnDigest("quay.io/calico/node:v3.28.1", dNode)},
		},
		{
			name:    "reference digest that conflicts with the lock",
			set:     []Image{img("calico/cni:v3.28.1"), withDigest("calico/node:v3.28.1", other)},
			wantErr: []string{"docker.io/calico/node:v3.28.1@" + other.String(), "precache.lock", dNode.String()},
		},
		{
			name: "empty set",
			set:  []Image{},
			want: []Image{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			before := slices.Clone(tt.set)
			got, err := ApplyLock(tt.set, lock, "precache.lock")
			if !reflect.DeepEqual(tt.set, before) {
				t.Errorf("ApplyLock modified its input: %+v, was %+v", tt.set, before)
			}
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("ApplyLock = %+v, want an error", got)
				}
				for _, want := range tt.wantErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("ApplyLock error = %q, want it to contain %q", err, want)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("ApplyLock: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ApplyLock:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}
