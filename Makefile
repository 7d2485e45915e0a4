# aliasip — run `make help` for the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
# The same flags as the images' binaries (hack/images): static, stripped,
# so tests and benchmarks run what users deploy.
LDFLAGS := -s -w -X main.version=$(VERSION)
GOBUILD := CGO_ENABLED=0 $(GO) build -trimpath
export ALIASIP_BIN_DIR := $(CURDIR)/$(BIN)

.PHONY: help build codegen verify-codegen deps images cluster cluster-down conformance test unit integration vet lint fuzz bench bench-cni bench-dataplane bench-growth bench-restart bench-agent-restart bench-startup bench-scale demo clean

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

build: ## Build bin/aliasip-controller, bin/aliasip-agent, bin/aliasip-cni (static, as in the images) and the kubectl plugin bin/kubectl-aliasip.
	$(GOBUILD) -ldflags "$(LDFLAGS)" -o $(BIN)/aliasip-controller ./controller/cmd/aliasip-controller
	$(GOBUILD) -ldflags "$(LDFLAGS)" -o $(BIN)/aliasip-agent ./node-agent/cmd/aliasip-agent
	$(GOBUILD) -ldflags "$(LDFLAGS)" -o $(BIN)/aliasip-cni ./node-agent/cmd/aliasip-cni
	$(GOBUILD) -ldflags "$(LDFLAGS)" -o $(BIN)/kubectl-aliasip ./internal/kubectlplugin/cmd/kubectl-aliasip

codegen: ## Regenerate the PodRange deepcopy, clientset, listers, informers and CRD.
	./hack/update-codegen.sh

verify-codegen: ## Fail when the generated PodRange code or CRD is stale (also run by make test).
	./hack/verify-codegen.sh

deps: ## Install/build etcd, kube-apiserver, kube-controller-manager, iproute2, iptables, CNI plugins, iperf3, helm, CoreDNS (cached).
	./hack/deps.sh

APP_VERSION := $(shell awk -F'"' '/^appVersion:/ {print $$2}' charts/aliasip/Chart.yaml)

# hack/deps.sh's cache, where it builds CoreDNS (hack/coredns).
CACHE ?= $(or $(ALIASIP_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/aliasip)

images: ## Build the image tarballs (aliasip, aliasip-netcheck, aliasip-pause, CoreDNS, and the e2e suite's agnhost, busybox, glibc-dns-testing, nginx, pause from make deps) into bin/images, no Docker needed.
	cd hack/images && $(GO) run . --repo $(CURDIR) --out-dir $(CURDIR)/$(BIN)/images --tag $(APP_VERSION) --coredns $(CACHE)/bin/coredns --e2e-bin-dir $(CACHE)/bin

cluster: deps images ## Real-node cluster (NODES=3 pool-a nodes, POOL_B_NODES=1 with their own PodRange, POOL_G_NODES=1 in a growable PodRange): control plane, containerd + kubelet per node, chart installed.
	./hack/cluster.sh up

cluster-down: ## Remove everything make cluster made (safe to run twice).
	./hack/cluster.sh down

conformance: deps images ## Upstream [sig-network] [Conformance], then Networking Granular Checks and Services (e2e.test v1.36.3, built here) on make cluster (brought up and down unless one is up); JUnit in bin/conformance.
	./hack/conformance.sh full

vet: ## go vet and gofmt check.
	$(GO) vet ./...
	cd hack/images && $(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

lint: vet ## Alias of vet.

unit: ## Unit tests only (no control plane; the data-plane golden test needs root).
	$(GO) test -count=1 ./cloud/... ./fake/... ./controller/... ./node-agent/...

test: deps vet build ## Every suite: unit, integration, netns, e2e, chart, real nodes (kubelet); what CI runs (one package at a time).
	cd hack/images && $(GO) test -count=1 ./...
	$(GO) test -count=1 -p 1 -timeout 60m ./...

fuzz: ## Run the fuzz targets for a while each.
	$(GO) test -run XXX -fuzz FuzzAllocator -fuzztime 60s ./controller/allocator
	$(GO) test -run XXX -fuzz FuzzOpen -fuzztime 60s ./node-agent/ipam
	$(GO) test -run XXX -fuzz FuzzParseConf -fuzztime 60s ./node-agent/cni
	$(GO) test -run XXX -fuzz FuzzParse -fuzztime 60s ./node-agent/egress

bench: deps build ## Benchmarks: node IPAM vs kube-controller-manager, GCE burst, CNI ADD/DEL vs ptp, data plane vs bridge, agent restart, allocator cost.
	$(GO) test -count=1 -run XXX -bench . -benchtime 1x -timeout 30m ./test/bench/
	$(GO) test -count=1 -run XXX -bench . ./controller/allocator/

bench-dataplane: deps build ## Pod-to-pod iperf3 throughput, ping RTT and first-packet latency, same node and across nodes, vs bridge + host-local and vs the limit (host loopback, host-to-host).
	$(GO) test -count=1 -run XXX -bench BenchmarkDataPlane -benchtime 1x -timeout 15m ./test/bench/

bench-cni: deps build ## CNI ADD/DEL latency through libcni vs ptp + host-local: one after another, 20 at a time and a 100-pod burst, with the plugin's own phase breakdown.
	$(GO) test -count=1 -run XXX -bench BenchmarkCNIAddDel -benchtime 1x -timeout 15m ./test/bench/

bench-growth: deps build ## Growable /28 blocks vs a fixed /24: address utilisation (and its limit) under pod churn (5-100 pods), top-up latency, ADD failures; fake cloud at 20 ms and the GCE test server at 200 ms operations.
	$(GO) test -count=1 -run XXX -bench BenchmarkGrowth -benchtime 1x -timeout 20m ./test/bench/

bench-startup: deps images build ## Pod start-up latency on make cluster (brought up and down unless one is up), ClusterLoader2's method (watch: create, scheduled, running with an IP; p50/p90/p99): 30 pods per node in waves, then 100 on one node, aliasip vs bridge + host-local on the same nodes, with the network's share (ALIASIP_STARTUP_ROUNDS, default 2).
	ALIASIP_BENCH_STARTUP=1 $(GO) test -count=1 -v -run TestPodStartupLatency -timeout 60m ./test/startup/

bench-restart: deps build ## Controller restart at 65,000 Nodes (GKE's maximum; ALIASIP_BENCH_NODES up to 65536): time to the first new podCIDR vs the LIST floor, RSS, CPU and allocations per node beside the API server's and etcd's; long.
	ALIASIP_BENCH_RESTART=1 $(GO) test -count=1 -run XXX -bench BenchmarkControllerRestart -benchtime 1x -timeout 90m ./test/bench/

bench-scale: deps build ## Issue 25 at scale: a 5,000-Node scale-up burst (and the 1,000 one) vs kube-controller-manager at the same client QPS, and steady-state GCE calls per resync per 1,000 nodes on the GCE test server.
	ALIASIP_BENCH_BURST_NODES=1000,5000 $(GO) test -count=1 -run XXX -bench 'BenchmarkNodeAllocation|BenchmarkGCEResync' -benchtime 1x -timeout 30m ./test/bench/

bench-agent-restart: deps build ## Agent restart with 250 pods, SIGTERM and SIGKILL (also in make bench): time to ready, longest pod gap, idle CPU vs 0 pods (ALIASIP_BENCH_IDLE=10s shortens the 60 s window).
	$(GO) test -count=1 -run XXX -bench BenchmarkAgentRestart -benchtime 1x -timeout 15m ./test/bench/

demo: deps build ## Local cluster: control plane, controller, 3 node namespaces with agents, pods, ping matrix.
	$(GO) run ./hack/demo

clean: ## Remove built binaries.
	rm -rf $(BIN)
