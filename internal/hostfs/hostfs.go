// Package hostfs reads a node's files from where its root filesystem is mounted: `/` on
// the node itself, `/host` in the DaemonSet. Every path is resolved the way the node
// resolves it — an absolute symbolic link starts again at the root, `..` stops at the
// root — so a read never leaves the root: a chroot without privileges.
//
// Why it matters: on Ubuntu /etc/resolv.conf is an absolute symbolic link to
// /run/systemd/resolve/stub-resolv.conf. Opened as /host/etc/resolv.conf, the kernel
// follows it to the container's own /run, not the node's: the file is missing, or it is
// the wrong one.
//
// Resolution uses github.com/cyphar/filepath-securejoin's SecureJoin semantics (links
// are followed inside the root, never out of it); os.Root is not used because it refuses
// absolute links outright, and those are exactly the links a node has. The files are only
// read; a link replaced between resolving and opening is out of scope, except that the
// last component is opened without following a link (O_NOFOLLOW).
package hostfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"
)

// Root is the directory the node's root filesystem is mounted at ("/" or "/host").
type Root string

// Link is one symbolic link followed while resolving a path.
type Link struct {
	// Path is the link's node path, e.g. "/etc/resolv.conf".
	Path string
	// Dest is what the link says, as written ("/run/systemd/resolve/stub-resolv.conf", "../run/…").
	Dest string
}

// Path is a node path resolved under a Root.
type Path struct {
	// Node is the path asked for, absolute and clean: "/etc/resolv.conf".
	Node string
	// Target is where it leads on the node once every link is followed:
	// "/run/systemd/resolve/stub-resolv.conf". Target == Node when no link was followed.
	Target string
	// Host is Target as this process opens it: the root joined with Target.
	Host string
	// Links are the links followed, in order.
	Links []Link
}

// String is the node path, with where it leads when links were followed:
// "/etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf". It never shows the root.
func (p Path) String() string {
	if p.Target == "" || p.Target == p.Node {
		return p.Node
	}
	return p.Node + " -> " + p.Target
}

// dir is the root as a clean absolute directory ("" means "/").
func (r Root) dir() (string, error) {
	if r == "" {
		return "/", nil
	}
	return filepath.Abs(string(r))
}

// Resolve resolves a node path (absolute or not; it is taken from the node's /) inside
// the root. A missing component is not an error here: the path is resolved as far as it
// exists, and opening it then fails with fs.ErrNotExist.
func (r Root) Resolve(path string) (Path, error) {
	node := filepath.Join("/", path)
	root, err := r.dir()
	if err != nil {
		return Path{Node: node}, err
	}
	rec := &recorder{root: root}
	host, err := securejoin.SecureJoinVFS(root, node, rec)
	if err != nil {
		return Path{Node: node, Links: rec.links}, &fs.PathError{Op: "resolve", Path: node, Err: unwrap(err)}
	}
	rel, err := filepath.Rel(root, host)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		// SecureJoin guarantees this cannot happen; checked so a future change cannot make it silent.
		return Path{Node: node}, &fs.PathError{Op: "resolve", Path: node, Err: errors.New("resolves outside the root")}
	}
	return Path{Node: node, Target: filepath.Join("/", rel), Host: host, Links: rec.links}, nil
}

// Open opens a node path for reading.
func (r Root) Open(path string) (*os.File, Path, error) {
	p, err := r.Resolve(path)
	if err != nil {
		return nil, p, err
	}
	f, err := p.Open()
	return f, p, err
}

// ReadFile reads a node file.
func (r Root) ReadFile(path string) ([]byte, Path, error) {
	p, err := r.Resolve(path)
	if err != nil {
		return nil, p, err
	}
	data, err := p.ReadFile()
	return data, p, err
}

// Stat describes what a node path leads to.
func (r Root) Stat(path string) (fs.FileInfo, Path, error) {
	p, err := r.Resolve(path)
	if err != nil {
		return nil, p, err
	}
	fi, err := p.Stat()
	return fi, p, err
}

// Glob returns the node paths matching pattern, sorted, like filepath.Glob; only the last
// element may hold a pattern ("/etc/systemd/resolved.conf.d/*.conf"). A missing directory
// matches nothing.
func (r Root) Glob(pattern string) ([]string, error) {
	pattern = filepath.Join("/", pattern)
	dir, base := filepath.Split(pattern)
	if hasMeta(dir) {
		return nil, fmt.Errorf("%s: %w (only the last element may be a pattern)", pattern, filepath.ErrBadPattern)
	}
	if _, err := filepath.Match(base, ""); err != nil {
		return nil, fmt.Errorf("%s: %w", pattern, err)
	}
	p, err := r.Resolve(dir)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(p.Host)
	if err != nil {
		return nil, nil
	}
	var out []string
	for _, e := range entries {
		if ok, _ := filepath.Match(base, e.Name()); ok {
			out = append(out, filepath.Join(p.Node, e.Name()))
		}
	}
	slices.Sort(out)
	return out, nil
}

// Open opens the resolved file for reading. Errors name the node path, not the root.
func (p Path) Open() (*os.File, error) {
	f, err := os.OpenFile(p.Host, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: p.String(), Err: unwrap(err)}
	}
	return f, nil
}

// ReadFile reads the resolved file.
func (p Path) ReadFile() ([]byte, error) {
	f, err := p.Open()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, &fs.PathError{Op: "read", Path: p.String(), Err: unwrap(err)}
	}
	if fi.IsDir() {
		return nil, &fs.PathError{Op: "read", Path: p.String(), Err: syscall.EISDIR}
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, &fs.PathError{Op: "read", Path: p.String(), Err: unwrap(err)}
	}
	return data, nil
}

// Stat describes the resolved file (the link's target, not the link).
func (p Path) Stat() (fs.FileInfo, error) {
	fi, err := os.Lstat(p.Host)
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: p.String(), Err: unwrap(err)}
	}
	return fi, nil
}

// recorder is SecureJoin's view of the filesystem, noting every link it reads.
type recorder struct {
	root  string
	links []Link
}

func (v *recorder) Lstat(name string) (os.FileInfo, error) { return os.Lstat(name) }

func (v *recorder) Readlink(name string) (string, error) {
	dest, err := os.Readlink(name)
	if err == nil {
		rel, _ := filepath.Rel(v.root, name)
		v.links = append(v.links, Link{Path: filepath.Join("/", rel), Dest: dest})
	}
	return dest, err
}

// unwrap drops an *fs.PathError's host path, keeping the cause.
func unwrap(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func hasMeta(path string) bool { return strings.ContainsAny(path, `*?[\`) }
