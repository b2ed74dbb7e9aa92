# precache — make help lists the targets.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BIN := bin/precache
TOOLS ?= $(HOME)/.cache/precache/tools
export PRECACHE_TOOLS := $(TOOLS)
COMPAT_CONTAINERD ?= /usr/bin/containerd

.PHONY: help build test test-unit test-integration test-compat test-monitoring lint bench demo image pin release tools clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

build: ## build bin/precache (static)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/precache

tools: ## build/install the daemons the tests need (containerd 2.4.2 + its runc shim and kube-apiserver 1.37.2 from the module proxy, Debian's containerd 1.6)
	./hack/tools.sh containerd shim kube compat

test: tools test-unit test-integration test-monitoring ## everything CI runs: unit tests, then integration tests on real daemons

test-unit: ## unit tests (nothing installed needed), hack/render's module included
	$(GO) test -race -count=1 ./cmd/... ./internal/... ./deploy/...
	cd hack/render && GOWORK=off $(GO) test -count=1 ./...

# The image the suite runs as a container (TestImageRuns), built once for both runs.
IMAGE_TAR = dist/precache-$(VERSION).oci.tar

test-integration: build ## integration tests on a real containerd 2.4.2 (CRI) and loopback registry, then the 1.6 compat run
	$(MAKE) --no-print-directory image >/dev/null
	PRECACHE_BIN=$(CURDIR)/$(BIN) PRECACHE_IMAGE_TAR=$(CURDIR)/$(IMAGE_TAR) $(GO) test -count=1 -timeout 20m ./test/integration/...
	$(MAKE) test-compat

# The compat run is about the daemon: the image's reproducibility (two builds, no daemon)
# is the main run's.
test-compat: build ## the integration suite against Debian's containerd 1.6 (pinning not honoured there: label only)
	@if [[ -x $(COMPAT_CONTAINERD) ]]; then \
		[[ -f $(IMAGE_TAR) ]] || $(MAKE) --no-print-directory image >/dev/null; \
		PRECACHE_BIN=$(CURDIR)/$(BIN) PRECACHE_IMAGE_TAR=$(CURDIR)/$(IMAGE_TAR) PRECACHE_CONTAINERD=$(COMPAT_CONTAINERD) $(GO) test -count=1 -timeout 20m -skip 'TestImageReproducible' ./test/integration/...; \
	elif [[ -n "$$CI" ]]; then echo "test-compat: $(COMPAT_CONTAINERD) missing in CI" >&2; exit 1; \
	else echo "test-compat: skipped, $(COMPAT_CONTAINERD) not installed (make tools as root installs it)"; fi

test-monitoring: build ## deploy/monitoring: alerts, PodMonitor and dashboard checked by Prometheus' own code on the real agent's /metrics (own module)
	cd test/monitoring && GOWORK=off PRECACHE_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 10m ./...

GOLANGCI_LINT_VERSION ?= v2.15.0
GOLANGCI_LINT := $(TOOLS)/golangci-lint-$(GOLANGCI_LINT_VERSION)/golangci-lint

lint: ## go vet, gofmt and golangci-lint (pinned, built from the module proxy into the tools cache)
	./hack/tools.sh lint
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || { gofmt -l .; exit 1; }
	$(GOLANGCI_LINT) run ./...
	cd test/monitoring && GOWORK=off $(GO) vet ./... && $(GOLANGCI_LINT) run ./...
	cd hack/render && GOWORK=off $(GO) vet ./... && $(GOLANGCI_LINT) run ./...

bench: build ## precache vs ctr, same registry + containerd, alternating rounds; prints the Markdown for docs/benchmarks.md
	./hack/tools.sh containerd kube bench
	$(GO) run ./test/cmd/bench -precache $(CURDIR)/$(BIN) -rounds $(or $(ROUNDS),5)

demo: build ## throwaway containerd + loopback registry: bootstrap, status, no-op, kubelet's view
	./hack/tools.sh containerd
	$(GO) run ./test/cmd/demo $(CURDIR)/$(BIN)

SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct)

image: ## OCI image tar for linux/amd64 + linux/arm64, no container engine, same commit → same digest; prints its path last
	@SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(GO) run ./hack/image -version $(VERSION) -out dist/precache-$(VERSION).oci.tar

OVERLAYS := kubespray operator
RENDER := cd hack/render && GOWORK=off $(GO) run .

pin: ## pin deploy/base to the image make image built (tag and digest; IMAGE_TAR=dist/precache-$(VERSION).oci.tar)
	$(RENDER) pin -deploy $(CURDIR)/deploy $(abspath $(or $(IMAGE_TAR),dist/precache-$(VERSION).oci.tar))

release: ## dist/: static linux amd64+arm64 binaries, the image (make image), one manifest per overlay pinned to it, SHA256SUMS
	@set -euo pipefail; v='$(VERSION)'; \
	rm -rf dist; mkdir -p dist; \
	for arch in amd64 arm64; do \
		echo "build dist/precache-$$v-linux-$$arch"; \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags "-s -w -X main.version=$$v" -o dist/precache-$$v-linux-$$arch ./cmd/precache; \
	done; \
	tar=$$($(MAKE) --no-print-directory image VERSION="$$v" | tail -n 1); \
	[[ -f "$$tar" ]] || { echo "release: the last line make image printed is not the image tar: '$$tar'" >&2; exit 1; }; \
	tar=$$(realpath "$$tar"); \
	($(RENDER) release -deploy $(CURDIR)/deploy -tar "$$tar" -version "$$v" -out $(CURDIR)/dist $(addprefix $(CURDIR)/deploy/overlays/,$(OVERLAYS))); \
	(cd dist && find . -maxdepth 1 -type f ! -name SHA256SUMS -printf '%P\n' | sort | xargs sha256sum > SHA256SUMS); \
	cat dist/SHA256SUMS

clean: ## remove build output
	rm -rf bin dist
