package cache

import (
	"context"
	"errors"
	"fmt"
	"strings"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/precache/precache/internal/manifest"
)

// Row is the state of one desired image in the store: what `precache status` prints.
type Row struct {
	Ref string `json:"ref"`
	// Digest is what the store's record points at; Expected what it must be, if known.
	Digest   digest.Digest `json:"digest,omitempty"`
	Expected digest.Digest `json:"expected,omitempty"`
	// Present: every CRI name (repo:tag, repo@digest, the image ID sha256:<config>) exists.
	Present bool `json:"present"`
	// DigestOK: no digest is expected, or the record's digest is the expected one.
	DigestOK bool `json:"digestOK"`
	Complete bool `json:"complete"`
	Unpacked bool `json:"unpacked"`
	Pinned   bool `json:"pinned"`
	// Problem says, for a row that is not OK, what is wrong.
	Problem string `json:"problem,omitempty"`
}

// OK reports whether the image is exactly as precache wants it.
func (r Row) OK() bool {
	return r.Present && r.DigestOK && r.Complete && r.Unpacked && r.Pinned
}

// Status reports the state of every image of set, in order, without changing anything.
func Status(ctx context.Context, store Store, set []manifest.Image) ([]Row, error) {
	rows := make([]Row, len(set))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, img := range set {
		g.Go(func() error {
			st := inspect(gctx, store, img)
			rows[i] = st.Row
			return st.err
		})
	}
	return rows, g.Wait()
}

// state is a Row plus what Ensure needs to act on it.
type state struct {
	Row
	// record is the primary record (tag name, or digest name for digest-only refs), if any.
	record *Image
	// records are the existing records by name.
	records map[string]Image
	// Config is the node platform's config digest (the image ID), when known.
	Config digest.Digest
	// err is a store failure (not "absent"): the image's state is unknown.
	err error
}

func inspect(ctx context.Context, store Store, img manifest.Image) state {
	st := state{Row: Row{Ref: img.Ref.String(), Expected: img.Ref.Digest}, records: map[string]Image{}}
	primary := img.Ref.TagName()
	if primary == "" {
		primary = img.Ref.String()
	}
	rec, err := store.Image(ctx, primary)
	if errors.Is(err, ErrNotFound) && img.Ref.Digest != "" && primary != img.Ref.String() {
		// Untagged, but the expected digest's record may still be here: then the image can
		// be re-tagged from what is stored, with no network.
		rec, err = store.Image(ctx, img.Ref.DigestName(img.Ref.Digest))
	}
	switch {
	case errors.Is(err, ErrNotFound):
		st.Problem = "not present"
		return st
	case err != nil:
		st.err = fmt.Errorf("reading image record %s: %w", primary, err)
		return st
	}
	st.record = &rec
	st.records[rec.Name] = rec
	st.Digest = rec.Target.Digest
	st.DigestOK = img.Ref.Digest == "" || img.Ref.Digest == rec.Target.Digest

	var problems []string
	if !st.DigestOK {
		problems = append(problems, fmt.Sprintf("has digest %s, expected %s", rec.Target.Digest, img.Ref.Digest))
	}
	// Content first: the node platform's config digest is the CRI's image ID, a name of its own.
	h, err := store.Check(ctx, rec.Target)
	if err != nil {
		st.err = fmt.Errorf("checking %s: %w", rec.Target.Digest, err)
		return st
	}
	st.Complete, st.Unpacked, st.Config = h.Complete, h.Unpacked, h.Config
	names := criNames(img.Ref, rec.Target.Digest, h.Config)
	st.Present, st.Pinned = true, true
	for _, name := range names {
		r := rec
		if name != rec.Name {
			r, err = store.Image(ctx, name)
			if errors.Is(err, ErrNotFound) || (err == nil && r.Target.Digest != rec.Target.Digest) {
				st.Present, st.Pinned = false, false
				problems = append(problems, "no record "+name)
				continue
			}
			if err != nil {
				st.err = fmt.Errorf("reading image record %s: %w", name, err)
				return st
			}
			st.records[name] = r
		}
		if r.Labels[LabelCRIPinned] != "pinned" || r.Labels[LabelManaged] != "true" {
			if st.Pinned {
				problems = append(problems, "not pinned")
			}
			st.Pinned = false
		}
	}
	if !h.Complete {
		switch {
		case h.Problem != "":
			problems = append(problems, h.Problem)
		default:
			problems = append(problems, fmt.Sprintf("%d blobs missing", len(h.Missing)))
		}
	}
	if !h.Unpacked {
		problems = append(problems, "not unpacked")
	}
	st.Problem = strings.Join(problems, "; ")
	return st
}
