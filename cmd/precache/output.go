package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/precache/precache/internal/cache"
)

// outputFormat is the -o flag of commands that print data.
type outputFormat string

func (o outputFormat) validate() error {
	switch o {
	case "table", "json":
		return nil
	}
	return &usageError{fmt.Errorf("invalid -o %q: use table or json", string(o))}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// hint adds what to do next for the failures the core can name.
func hint(err error) string {
	switch {
	case errors.Is(err, cache.ErrUnauthorized):
		return "\nhint: the registry refused the credentials; pass a docker config.json with --docker-config"
	case errors.Is(err, cache.ErrUnavailable):
		return "\nhint: the registry could not be reached; check it is up and reachable from this node, or configure a mirror in --hosts-dir"
	case errors.Is(err, cache.ErrNotFound):
		return "\nhint: the registry has no such image; check --calico-version, --registry, --image-path and --image-prefix"
	}
	return ""
}
