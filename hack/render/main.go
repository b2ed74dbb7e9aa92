// Command render pins precache's image in deploy/ and renders the kustomize overlays, with
// kustomize's own Go API (the code `kubectl apply -k` runs).
//
//	render pin [-deploy deploy] dist/precache-<version>.oci.tar
//	    writes the image's tag and digest into deploy/base/kustomization.yaml (make pin)
//	render build [-deploy deploy] [-tar FILE] deploy/overlays/NAME
//	    prints the overlay's manifests; with -tar, pinned to that image, the tree untouched
//	render release -tar FILE -version V -out dist [-deploy deploy] OVERLAY...
//	    writes dist/precache-V-NAME.yaml for each overlay, pinned to the image (make release)
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/kustomize/kyaml/filesys"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: render pin|build|release … (see hack/render/main.go)")
	}
	fl := flag.NewFlagSet("render "+args[0], flag.ContinueOnError)
	deployDir := fl.String("deploy", "deploy", "the kustomize tree (base/ and overlays/)")
	tarFile := fl.String("tar", "", "the OCI layout tar make image wrote")
	version := fl.String("version", "", "the version released; the image's tag must be it")
	outDir := fl.String("out", "dist", "where release writes the manifests")
	if err := fl.Parse(args[1:]); err != nil {
		return err
	}
	switch args[0] {
	case "pin":
		if fl.NArg() != 1 {
			return errors.New("usage: render pin [-deploy DIR] IMAGE.oci.tar")
		}
		return pin(*deployDir, fl.Arg(0))
	case "build":
		if fl.NArg() != 1 {
			return errors.New("usage: render build [-deploy DIR] [-tar IMAGE.oci.tar] OVERLAY_DIR")
		}
		fsys, dir := filesys.MakeFsOnDisk(), fl.Arg(0)
		if *tarFile != "" {
			img, err := imageOf(*tarFile, "")
			if err != nil {
				return err
			}
			if fsys, dir, err = pinnedOverlay(*deployDir, dir, img); err != nil {
				return err
			}
		}
		out, err := Build(fsys, dir)
		if err != nil {
			return err
		}
		_, err = os.Stdout.Write(out)
		return err
	case "release":
		if *tarFile == "" || *version == "" || fl.NArg() == 0 {
			return errors.New("usage: render release -tar IMAGE.oci.tar -version V [-out DIR] [-deploy DIR] OVERLAY_DIR [OVERLAY_DIR]")
		}
		img, err := imageOf(*tarFile, *version)
		if err != nil {
			return err
		}
		for _, overlay := range fl.Args() {
			fsys, dir, err := pinnedOverlay(*deployDir, overlay, img)
			if err != nil {
				return err
			}
			out, err := Build(fsys, dir)
			if err != nil {
				return err
			}
			file := filepath.Join(*outDir, fmt.Sprintf("precache-%s-%s.yaml", *version, filepath.Base(filepath.Clean(overlay))))
			header := fmt.Sprintf("# precache %s, overlay %s: kubectl apply -f %s\n# image %s (%s)\n",
				*version, filepath.Base(filepath.Clean(overlay)), filepath.Base(file), img.Ref(), strings.Join(img.Platforms, ", "))
			if err := os.WriteFile(file, append([]byte(header), out...), 0o644); err != nil {
				return err
			}
			fmt.Println(file)
		}
		return nil
	}
	return fmt.Errorf("unknown command %q: pin, build or release", args[0])
}

// imageOf reads the image tar; when version is set, the image must be tagged with it.
func imageOf(tarFile, version string) (Image, error) {
	img, err := ReadImageTar(tarFile)
	if err != nil {
		return Image{}, err
	}
	switch {
	case img.Tag == "" && version != "":
		img.Tag = version
	case img.Tag == "":
		return Image{}, fmt.Errorf("%s names no tag for %s: say which with -version", tarFile, Repository)
	case version != "" && img.Tag != version:
		return Image{}, fmt.Errorf("%s holds %s:%s, not version %s: run make image again", tarFile, Repository, img.Tag, version)
	}
	return img, checkPin(img.Tag, img.Digest)
}

func pin(deployDir, tarFile string) error {
	img, err := imageOf(tarFile, "")
	if err != nil {
		return err
	}
	file := filepath.Join(deployDir, BaseKustomization)
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	out, err := SetPin(data, Pin{Tag: img.Tag, Digest: img.Digest})
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	if err := os.WriteFile(file, out, 0o644); err != nil {
		return err
	}
	fmt.Printf("%s: %s (%s)\n", file, img.Ref(), strings.Join(img.Platforms, ", "))
	return nil
}

// pinnedOverlay maps an overlay directory into an in-memory copy of deployDir pinned to img.
func pinnedOverlay(deployDir, overlay string, img Image) (filesys.FileSystem, string, error) {
	fsys, abs, err := PinnedFS(deployDir, Pin{Tag: img.Tag, Digest: img.Digest})
	if err != nil {
		return nil, "", err
	}
	o, err := filepath.Abs(overlay)
	if err != nil {
		return nil, "", err
	}
	if rel, err := filepath.Rel(abs, o); err != nil || strings.HasPrefix(rel, "..") {
		return nil, "", fmt.Errorf("overlay %s is not under %s", overlay, deployDir)
	}
	return fsys, o, nil
}
