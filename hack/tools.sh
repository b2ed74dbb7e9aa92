#!/usr/bin/env bash
# Installs what the integration tests, the benchmark and the demo run against, into a
# cache that survives between runs (stamped by version, so warm runs take a second):
#   - containerd + ctr v2.4.2, built from the Go module proxy (~2 min cold)
#   - containerd-shim-runc-v2 v2.4.2 next to them, and runc, to run containers (the image test)
#   - Debian's containerd 1.6.20 (apt), for the compatibility run, when running as root
#
# Usage: hack/tools.sh [containerd] [shim] [kube] [compat] [lint] [bench]   (no argument: the first four)
set -euo pipefail

want=" ${*:-containerd shim kube compat} "
TOOLS=${PRECACHE_TOOLS:-$HOME/.cache/precache/tools}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
dir="$TOOLS/containerd-$CONTAINERD_VERSION"

if [[ $want != *" containerd "* ]]; then
	:
elif [[ -x "$dir/containerd" && -x "$dir/ctr" ]]; then
	echo "tools: containerd $CONTAINERD_VERSION cached in $dir"
else
	echo "tools: building containerd and ctr $CONTAINERD_VERSION into $dir (about 2 minutes the first time)"
	mkdir -p "$dir.tmp"
	GOBIN="$dir.tmp" GOFLAGS=-buildvcs=false go install -ldflags='-s -w' \
		"github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
		"github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
	rm -rf "$dir" && mv "$dir.tmp" "$dir"
fi

# kube-apiserver and etcd for the cluster tests (envtest), built from the module proxy through
# the wrapper module in hack/kube-apiserver (k8s.io/kubernetes cannot be go-installed: it has
# replace directives). Cold: 5–8 minutes and ~2.5 GB for the linker; then cached.
KUBE_VERSION=${KUBE_VERSION:-v1.37.2}
kdir="$TOOLS/kube-$KUBE_VERSION"
if [[ $want != *" kube "* ]]; then
	:
elif [[ -x "$kdir/kube-apiserver" && -x "$kdir/etcd" ]]; then
	echo "tools: kube-apiserver and etcd $KUBE_VERSION cached in $kdir"
else
	echo "tools: building kube-apiserver $KUBE_VERSION and etcd into $kdir (5–8 minutes the first time)"
	here=$(cd "$(dirname "$0")" && pwd)
	mkdir -p "$kdir.tmp"
	minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
	(cd "$here/kube-apiserver" && GOWORK=off GOFLAGS=-buildvcs=false go build -trimpath -o "$kdir.tmp/kube-apiserver" \
		-ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor" \
		k8s.io/kubernetes/cmd/kube-apiserver)
	(cd "$here/kube-apiserver" && GOWORK=off GOFLAGS=-buildvcs=false go build -trimpath -ldflags "-s -w" -o "$kdir.tmp/etcd" go.etcd.io/etcd/server/v3)
	rm -rf "$kdir" && mv "$kdir.tmp" "$kdir"
fi

# golangci-lint, pinned, from the module proxy (~3 minutes cold).
GOLANGCI_LINT_VERSION=${GOLANGCI_LINT_VERSION:-v2.15.0}
ldir="$TOOLS/golangci-lint-$GOLANGCI_LINT_VERSION"
if [[ $want != *" lint "* ]]; then
	:
elif [[ -x "$ldir/golangci-lint" ]]; then
	echo "tools: golangci-lint $GOLANGCI_LINT_VERSION cached in $ldir"
else
	echo "tools: building golangci-lint $GOLANGCI_LINT_VERSION into $ldir (about 3 minutes the first time)"
	mkdir -p "$ldir.tmp"
	GOBIN="$ldir.tmp" GOFLAGS=-buildvcs=false go install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$GOLANGCI_LINT_VERSION"
	rm -rf "$ldir" && mv "$ldir.tmp" "$ldir"
fi

# apt packages: Debian's containerd (compat run), docker-registry and time (benchmark).
apt_install() {
	if ! apt-get install -y --no-install-recommends "$@" >/tmp/precache-apt.log 2>&1; then
		apt-get update >>/tmp/precache-apt.log 2>&1
		apt-get install -y --no-install-recommends "$@" >>/tmp/precache-apt.log 2>&1 || {
			cat /tmp/precache-apt.log >&2
			exit 1
		}
	fi
}

# Running containers (the image test): containerd 2.4.2's runc shim, beside containerd,
# where the tests put it first on the daemon's PATH (Debian's containerd package brings a
# 1.6 shim into /usr/bin), and runc, which Debian packages on its own.
if [[ $want == *" shim "* ]]; then
	if [[ -x "$dir/containerd-shim-runc-v2" ]]; then
		echo "tools: containerd-shim-runc-v2 $CONTAINERD_VERSION cached in $dir"
	else
		echo "tools: building containerd-shim-runc-v2 $CONTAINERD_VERSION into $dir"
		mkdir -p "$dir.shim"
		CGO_ENABLED=0 GOBIN="$dir.shim" GOFLAGS=-buildvcs=false go install -ldflags='-s -w' \
			"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
		mkdir -p "$dir" && mv "$dir.shim/containerd-shim-runc-v2" "$dir/" && rmdir "$dir.shim"
	fi
	if runc=$(PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin command -v runc); then
		echo "tools: runc $("$runc" --version | awk 'NR==1{print $3}') at $runc"
	elif [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
		echo "tools: installing Debian's runc"
		apt_install runc
	else
		echo "tools: no runc and not root: the image run test will be skipped (CI fails it)" >&2
	fi
fi

# The compatibility run uses Debian's containerd (1.6.20 on bookworm).
if [[ $want != *" compat "* ]]; then
	:
elif [[ -x /usr/bin/containerd ]]; then
	echo "tools: compat containerd $(/usr/bin/containerd --version | awk '{print $3}') at /usr/bin/containerd"
elif [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
	echo "tools: installing Debian's containerd for the compatibility run"
	# The image's policy-rc.d keeps the packaged daemon from starting by itself.
	apt_install containerd
else
	echo "tools: no /usr/bin/containerd and not root: the 1.6 compatibility run will be skipped" >&2
fi

if [[ $want == *" bench "* ]]; then
	if [[ ! -x /usr/bin/docker-registry || ! -x /usr/bin/time ]]; then
		[[ $(id -u) == 0 ]] || { echo "tools: the benchmark needs docker-registry and time (apt-get install docker-registry time)" >&2; exit 1; }
		echo "tools: installing docker-registry and time for the benchmark"
		apt_install docker-registry time
	fi
fi
