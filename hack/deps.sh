#!/usr/bin/env bash
# Installs or builds everything the tests, demo, benchmarks and the
# real-node cluster need, once: etcd (Debian's etcd-server), iproute2,
# iptables, containerd + runc (Debian's 1.6.20 / 1.1.5, which kubelet 1.36
# accepts), Debian's CNI reference plugins, iperf3 and perf (for comparisons),
# portmap built at CNI 1.1, helm, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy and kubectl built from the
# k8s.io/kubernetes module (hack/k8s), Kubernetes' e2e suite (e2e.test) and
# its test server agnhost from the same module, CoreDNS with only the
# plugins make cluster uses, built from its Go module (hack/coredns), into
# the cache, and Debian's busybox-static, bind9-dnsutils (dig),
# netcat-openbsd and wget, which hack/images puts in the e2e tests' images.
# Idempotent and cached.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${ALIASIP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aliasip}
k8s_version=$(awk '/k8s.io\/kubernetes v/ {print $3; exit}' "$root/hack/k8s/go.mod")
mkdir -p "$cache/bin"

need_pkgs=()
command -v etcd >/dev/null 2>&1 || need_pkgs+=(etcd-server)
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
[ -x /usr/lib/cni/ptp ] || need_pkgs+=(containernetworking-plugins)
command -v iptables >/dev/null 2>&1 || need_pkgs+=(iptables)
command -v containerd >/dev/null 2>&1 || need_pkgs+=(containerd)
command -v runc >/dev/null 2>&1 || need_pkgs+=(runc)
command -v nsenter >/dev/null 2>&1 || need_pkgs+=(util-linux)
command -v conntrack >/dev/null 2>&1 || need_pkgs+=(conntrack)
command -v iperf3 >/dev/null 2>&1 || need_pkgs+=(iperf3)
# perf profiles the data-plane benchmark's streams (where the time goes).
command -v perf >/dev/null 2>&1 || need_pkgs+=(linux-perf)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
# nft renders the agent's masquerade table in the tests (the agent itself
# programs it through netlink and needs no binary).
command -v nft >/dev/null 2>&1 || need_pkgs+=(nftables)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
# The e2e tests' busybox, agnhost and DNS images (hack/images --e2e-bin-dir)
# take their applets from Debian's static busybox, and dig, nc (-u, -v:
# netcat-openbsd) and wget (busybox-static's crashes on -T), with their
# shared libraries, from Debian's packages (the shell, dash, and curl, ss
# and getent too, installed above or always there).
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need_pkgs+=(busybox-static)
command -v dig >/dev/null 2>&1 || need_pkgs+=(bind9-dnsutils)
[ -x /bin/nc.openbsd ] || need_pkgs+=(netcat-openbsd)
command -v wget >/dev/null 2>&1 || need_pkgs+=(wget)
if [ ${#need_pkgs[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "deps: need Debian packages ${need_pkgs[*]}; run as root" >&2
		exit 1
	fi
	echo "deps: installing ${need_pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >/dev/null
	apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# Every Kubernetes binary is stamped with its version, or nodes report
# v0.0.0-master (k8s.io/component-base/version is set by -X at link time).
minor=$(echo "$k8s_version" | cut -d. -f2)
k8s_ld="-X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
k8s_bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
stamp="$cache/bin/.k8s-version"
[ "$(cat "$stamp" 2>/dev/null)" = "$k8s_version" ] || rm -f "$stamp"
k8s_missing=()
for b in "${k8s_bins[@]}"; do
	[ -f "$stamp" ] && [ -x "$cache/bin/$b" ] || k8s_missing+=("$b")
done
if [ ${#k8s_missing[@]} -gt 0 ]; then
	echo "deps: building ${k8s_missing[*]} $k8s_version (about 8 minutes for all, once)"
	cd "$root/hack/k8s"
	export GONOSUMDB=k8s.io/kubernetes GOFLAGS=-mod=mod
	tmp="$cache/bin/.k8s-build"
	rm -rf "$tmp" && mkdir -p "$tmp"
	pkgs=()
	for b in "${k8s_missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
	go build -trimpath -ldflags "$k8s_ld" -o "$tmp/" "${pkgs[@]}"
	for b in "${k8s_missing[@]}"; do mv "$tmp/$b" "$cache/bin/$b"; done
	rm -rf "$tmp"
	echo "$k8s_version" >"$stamp"
fi
# Kubernetes' own end-to-end suite at the same version, for the
# conformance run: e2e.test (`go test -c` of test/e2e, stamped like the
# binaries above, so it reports and checks the right version) and agnhost,
# the test server most e2e pods run, static (it runs in a busybox-based
# image, hack/images --e2e-bin-dir) and with its image's version
# (test/images/agnhost/VERSION) in main.Version, as upstream's image build
# sets it.
e2e_stamp="$cache/bin/.e2e-version"
if [ ! -x "$cache/bin/e2e.test" ] || [ ! -x "$cache/bin/agnhost" ] || [ "$(cat "$e2e_stamp" 2>/dev/null)" != "$k8s_version" ]; then
	echo "deps: building e2e.test and agnhost $k8s_version (about 7 minutes, once)"
	cd "$root/hack/k8s"
	export GONOSUMDB=k8s.io/kubernetes GOFLAGS=-mod=mod
	go test -c -trimpath -ldflags "$k8s_ld" -o "$cache/bin/e2e.test.tmp" k8s.io/kubernetes/test/e2e
	agnhost_dir=$(go list -f '{{.Dir}}' k8s.io/kubernetes/test/images/agnhost)
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.Version=$(cat "$agnhost_dir/VERSION")" -o "$cache/bin/agnhost.tmp" k8s.io/kubernetes/test/images/agnhost
	mv "$cache/bin/e2e.test.tmp" "$cache/bin/e2e.test"
	mv "$cache/bin/agnhost.tmp" "$cache/bin/agnhost"
	echo "$k8s_version" >"$e2e_stamp"
fi
# agnhost's files its upstream image carries beside the binary: porter's
# TLS pair (the image's /localhost.crt and /localhost.key, which the Proxy
# conformance test's TLS ports serve), from the same module.
if [ ! -f "$cache/bin/agnhost.d/localhost.key" ] || [ "$(cat "$cache/bin/agnhost.d/.version" 2>/dev/null)" != "$k8s_version" ]; then
	cd "$root/hack/k8s"
	porter=$(GONOSUMDB=k8s.io/kubernetes GOFLAGS=-mod=mod go list -f '{{.Dir}}' k8s.io/kubernetes/test/images/agnhost/porter)
	mkdir -p "$cache/bin/agnhost.d"
	cp "$porter/localhost.crt" "$porter/localhost.key" "$cache/bin/agnhost.d/"
	chmod 644 "$cache/bin/agnhost.d/localhost.crt" "$cache/bin/agnhost.d/localhost.key"
	echo "$k8s_version" >"$cache/bin/agnhost.d/.version"
fi
# portmap from the CNI reference plugins, new enough for CNI 1.1 (Debian's
# 1.1.1 stops at 1.0.0), to chain after aliasip-cni.
cni_version=$(grep -o "containernetworking/plugins v[0-9.]*" "$root/hack/cni/go.mod" | head -1 | cut -d" " -f2)
mkdir -p "$cache/cni"
if [ ! -x "$cache/cni/portmap" ] || [ "$(cat "$cache/cni/.version" 2>/dev/null)" != "$cni_version" ]; then
	echo "deps: building CNI portmap $cni_version"
	cd "$root/hack/cni"
	GOFLAGS=-mod=mod go build -trimpath -o "$cache/cni/portmap" github.com/containernetworking/plugins/plugins/meta/portmap
	echo "$cni_version" >"$cache/cni/.version"
fi
# helm, to lint, render and install charts/aliasip in the tests.
helm_version=$(grep -o "helm.sh/helm/v3 v[0-9.]*" "$root/hack/helm/go.mod" | head -1 | cut -d" " -f2)
if [ ! -x "$cache/bin/helm" ] || [ "$(cat "$cache/bin/.helm-version" 2>/dev/null)" != "$helm_version" ]; then
	echo "deps: building helm $helm_version (once)"
	cd "$root/hack/helm"
	GOFLAGS=-mod=mod go build -trimpath -o "$cache/bin/helm.tmp" helm.sh/helm/v3/cmd/helm
	mv "$cache/bin/helm.tmp" "$cache/bin/helm"
	echo "$helm_version" >"$cache/bin/.helm-version"
fi
# CoreDNS, the cluster DNS of make cluster and its outside host's DNS
# server, built static (it runs in a FROM-scratch image, and on the host),
# with only the plugins hack/coredns imports. Its version is the module's
# (coremain.CoreVersion); the stamp is the version hack/coredns pins.
coredns_version=$(grep -o "github.com/coredns/coredns v[0-9.]*" "$root/hack/coredns/go.mod" | head -1 | cut -d" " -f2)
if [ ! -x "$cache/bin/coredns" ] || [ "$(cat "$cache/bin/.coredns-version" 2>/dev/null)" != "$coredns_version" ]; then
	echo "deps: building CoreDNS $coredns_version (about 3 minutes, once)"
	cd "$root/hack/coredns"
	CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$cache/bin/coredns.tmp" .
	mv "$cache/bin/coredns.tmp" "$cache/bin/coredns"
	echo "$coredns_version" >"$cache/bin/.coredns-version"
fi
echo "deps: ok (etcd $(etcd --version | awk 'NR==1{print $3}'), kubernetes $k8s_version with e2e.test and agnhost, CoreDNS $coredns_version in $cache/bin)"
