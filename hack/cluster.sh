#!/usr/bin/env bash
# A Kubernetes cluster of real nodes on one machine, with no Docker and no
# registry, that installs charts/aliasip the way a kind user does:
#
#   hack/cluster.sh up      (make cluster; NODES=3 POOL_B_NODES=1 POOL_G_NODES=1)   last line: KUBECONFIG=<path>
#   hack/cluster.sh down    (make cluster-down)       safe to run twice
#   hack/cluster.sh status                            down, up or stale (up cleans a stale one)
#   hack/cluster.sh load-images                       after make images
#   hack/cluster.sh remove-node NAME                  the node's "VM" goes away
#
# The control plane (etcd, kube-apiserver, kube-controller-manager without
# --allocate-node-cidrs, kube-scheduler) runs on the host. Each node is a
# network namespace plus a mount namespace running its own containerd,
# kubelet and kube-proxy. The nodes' eth0s sit on a bridge in a hub
# namespace that plays the VPC; the API server listens on a veth into that
# bridge, so pod traffic never crosses the host's FORWARD chain.
#
# Two node pools, labelled as GKE labels its pools
# (cloud.google.com/gke-nodepool, as in the README's PodRange example):
# pool-a, NODES nodes (node-1..), get their blocks from the chart's
# clusterCIDR (the implicit range "default"); pool-b, POOL_B_NODES nodes
# after them, from the PodRange pool-b with its own CIDR and a smaller
# block (maxPodsPerNode 32 -> /26, kubelet maxPods 32). The pool-b range is
# created once the chart has installed the CRD and the pool's kubelets
# start after it is Ready, as a node pool is added to a running cluster.
# A third pool, pool-g (POOL_G_NODES nodes, numbered after pool-b), takes
# its blocks from a growable PodRange (spec.growth, README "Growable
# ranges"): each node starts with one /28 and is given more /28s as its
# pods need them, up to 8 (13 + 7 x 16 addresses: the kubelet's default
# maxPods of 110), and gives them back once they empty.
#
# An outside: a namespace beyond the VPC's router (the hub), as the
# internet is beyond a VPC's, with an HTTP server, a UDP recorder and a DNS
# server for the zone outside.test on 198.18.0.10. It routes back only to
# the node subnet. Each kubelet gives dnsPolicy Default pods a resolv.conf
# naming that DNS server, as a node's /etc/resolv.conf names its network's.
#
# Cluster DNS: CoreDNS (hack/coredns, built by make deps, imaged by make
# images) deployed as kubeadm deploys it, which is how kind's clusters get
# it, with the kube-dns Service at the clusterDNS address every kubelet is
# given.
#
# Nodes register with kind's providerID (kind://docker/aliasip/<node>), the
# form kind's kubeadm config gives every node (kubernetes-sigs/kind
# pkg/cluster/internal/kubeadm/config.go: the kubelet's provider-id is
# "kind://{{.NodeProvider}}/{{.ClusterName}}/{{.NodeName}}", NodeProvider
# "docker" for the docker provider).
#
# Needs root and `make deps` (etcd, containerd, runc, the Kubernetes
# binaries, CoreDNS) and `make images` (the image tarballs, and the
# netcheck binary the outside host runs).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${ALIASIP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aliasip}
dir=${ALIASIP_CLUSTER_DIR:-/var/lib/aliasip-cluster}
run=/run/aliasip-cluster # unix sockets: short paths
nodes=${NODES:-3}               # pool-a
pool_b_nodes=${POOL_B_NODES:-1} # pool-b, numbered after pool-a
images=${ALIASIP_IMAGES:-$root/bin/images}
cluster_cidr=10.244.0.0/16 # the README's kind section; the range "default", pool-a
pool_b_range=pool-b        # the PodRange of pool-b
pool_b_cidr=10.64.0.0/16   # disjoint from cluster_cidr and service_cidr
pool_b_max_pods=32         # PodRange maxPodsPerNode and the pool's kubelet maxPods: /26 blocks
pool_g_nodes=${POOL_G_NODES:-1} # pool-g, numbered after pool-b
pool_g_range=pool-g             # the growable PodRange of pool-g
pool_g_cidr=10.80.0.0/16        # disjoint from the other pod ranges and service_cidr
pool_g_mask=28                  # the first block and every extra one
pool_g_max_blocks=8             # 13 + 7 x 16 = 125 addresses >= the kubelet's default maxPods 110
pool_g_return_after=15          # seconds an extra block stays empty before it is drained
total=$((nodes + pool_b_nodes + pool_g_nodes))
service_cidr=10.96.0.0/16
net=192.168.90 # the emulated VPC subnet: .1 hub bridge, .2 API server, .11+ nodes
# Dual-stack, as kind's ipFamily: dual and a GKE dual-stack subnet: the
# VPC subnet's IPv6 side (::1 the hub, ::11+ the nodes, each node's second
# InternalIP), the fake cloud's internal IPv6 range (each instance the next
# /96 of it, its pods the first /112 of that: the chart's ipv6.range), and
# the Services' IPv6 range (kind's default dual-stack service subnet,
# kubernetes-sigs/kind pkg/internal/apis/config/default.go
# SetDefaultsCluster: fd00:10:96::/112).
net6=fd00:90:: # the VPC subnet's IPv6 /64
ipv6_range=fd00:10:244::/64
service_cidr6=fd00:10:96::/112
api_ip=$net.2
api_port=6443
# The outside: RFC 2544's benchmark range 198.18.0.0/15, never a real
# address, so nothing the cluster sends there can leave this machine by
# mistake. The hub (the VPC's router) is .1, the outside host .10.
outside_ns=aliasip-outside
outside_gw=198.18.0.1
outside_ip=198.18.0.10
# Its IPv6 side: RFC 5180's IPv6 benchmarking range 2001:2::/48, the IPv6
# twin of 198.18.0.0/15.
outside_gw6=2001:2::1
outside_ip6=2001:2::10
outside_zone=outside.test # RFC 6761: .test is reserved for testing
# kubeadm's cluster DNS address: the 10th address of the service subnet
# (kubernetes cmd/kubeadm/app/constants/constants.go GetDNSIP), 10.96.0.10
# in kind.
dns_ip=10.96.0.10
k8s_version=$(awk '/k8s.io\/kubernetes v/ {print $3; exit}' "$root/hack/k8s/go.mod")

log() { echo "cluster: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}
bin() { echo "$cache/bin/$1"; }
node_name() { echo "node-$1"; }
node_ip() { echo "$net.$((10 + $1))"; }
node_ip6() { echo "$net6$((10 + $1))"; }
node_pool() {
	if [ "$1" -le "$nodes" ]; then
		echo pool-a
	elif [ "$1" -le $((nodes + pool_b_nodes)) ]; then
		echo pool-b
	else
		echo pool-g
	fi
}

# start NAME CMD... runs CMD in its own session, logging to $dir/logs/NAME.log.
start() {
	local name=$1
	shift
	setsid "$@" >>"$dir/logs/$name.log" 2>&1 </dev/null &
	echo $! >"$dir/pids/$name"
}

# wait_for SECONDS DESCRIPTION CMD... polls CMD every half second.
wait_for() {
	local secs=$1 what=$2
	shift 2
	local deadline=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $deadline ] || die "timed out after ${secs}s waiting for $what"
		sleep 0.5
	done
}

kubectl_() { "$(bin kubectl)" --kubeconfig "$dir/kubeconfig" "$@"; }

# --- certificates and credentials --------------------------------------

pki() {
	local p=$dir/pki
	mkdir -p "$p"
	openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=aliasip-cluster-ca" \
		-keyout "$p/ca.key" -out "$p/ca.crt" 2>/dev/null
	cat >"$p/apiserver.ext" <<EOF
subjectAltName=IP:$api_ip,IP:10.96.0.1,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth
EOF
	openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout "$p/apiserver.key" -out "$p/apiserver.csr" 2>/dev/null
	openssl x509 -req -in "$p/apiserver.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial -days 30 \
		-extfile "$p/apiserver.ext" -out "$p/apiserver.crt" 2>/dev/null
	# The API server's client certificate towards the kubelets (logs, exec).
	echo "extendedKeyUsage=clientAuth" >"$p/client.ext"
	openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
		-keyout "$p/kubelet-client.key" -out "$p/kubelet-client.csr" 2>/dev/null
	openssl x509 -req -in "$p/kubelet-client.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial -days 30 \
		-extfile "$p/client.ext" -out "$p/kubelet-client.crt" 2>/dev/null
	openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
	openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
	chmod 600 "$p"/*.key
}

token() { openssl rand -hex 16; }

# kubeconfig FILE TOKEN writes a kubeconfig for the API server on the VPC.
kubeconfig() {
	cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: aliasip
  cluster:
    server: https://$api_ip:$api_port
    certificate-authority: $dir/pki/ca.crt
users:
- name: user
  user:
    token: $2
contexts:
- name: aliasip
  context: {cluster: aliasip, user: user}
current-context: aliasip
EOF
	chmod 600 "$1"
}

credentials() {
	local admin kcm sched proxy
	admin=$(token) kcm=$(token) sched=$(token) proxy=$(token)
	{
		echo "$admin,admin,admin,system:masters"
		echo "$kcm,system:kube-controller-manager,kcm"
		echo "$sched,system:kube-scheduler,scheduler"
		echo "$proxy,system:kube-proxy,kube-proxy"
	} >"$dir/pki/tokens.csv"
	kubeconfig "$dir/kubeconfig" "$admin"
	kubeconfig "$dir/kcm.kubeconfig" "$kcm"
	kubeconfig "$dir/scheduler.kubeconfig" "$sched"
	kubeconfig "$dir/kube-proxy.kubeconfig" "$proxy"
	for i in $(seq 1 "$total"); do
		local n t
		n=$(node_name "$i") t=$(token)
		# The kubelet's identity as the Node authorizer and NodeRestriction know it.
		echo "$t,system:node:$n,$n,system:nodes" >>"$dir/pki/tokens.csv"
		mkdir -p "$dir/nodes/$n"
		kubeconfig "$dir/nodes/$n/kubelet.kubeconfig" "$t"
	done
	chmod 600 "$dir/pki/tokens.csv"
}

# --- network --------------------------------------------------------------

hub() {
	ip netns add aliasip-hub
	ip -n aliasip-hub link set dev lo up
	ip -n aliasip-hub link add vpc0 type bridge
	ip -n aliasip-hub addr add "$net.1/24" dev vpc0
	# nodad (here and for every fixed address below): usable at once, as
	# a VM's or a router's address is; duplicate address detection would
	# hold each back for a second (ip-address(8) nodad).
	ip -n aliasip-hub addr add "${net6}1/64" dev vpc0 nodad
	ip -n aliasip-hub link set dev vpc0 up
	# The API server's leg on the VPC.
	ip link add vpchost0 mtu 1460 type veth peer name api netns aliasip-hub
	ip -n aliasip-hub link set dev api master vpc0 up
	ip addr add "$api_ip/24" dev vpchost0
	ip link set dev vpchost0 up
	# Pods reach the API server (through the kubernetes Service) with their
	# own addresses. On GCE the VPC delivers a pod address to the VM that
	# holds its alias range; here the host finds it on the VPC link by ARP,
	# and the node that has the pod's /32 answers (proxy_arp on its eth0).
	# The same for every pod range: the default, pool-b's and pool-g's.
	ip route replace "$cluster_cidr" dev vpchost0
	ip route replace "$pool_b_cidr" dev vpchost0
	ip route replace "$pool_g_cidr" dev vpchost0
}

# outside_net makes the outside host: a namespace reached through the
# VPC's router. The hub, which so far only bridged the VPC, routes between
# the VPC (vpc0) and the outside (out0), as a VPC's gateway does between
# its subnet and the internet.
outside_net() {
	ip netns add "$outside_ns"
	ip -n "$outside_ns" link set dev lo up
	ip link add out0 netns aliasip-hub type veth peer name eth0 netns "$outside_ns"
	ip -n aliasip-hub addr add "$outside_gw/24" dev out0
	ip -n aliasip-hub link set dev out0 up
	ip -n "$outside_ns" addr add "$outside_ip/24" dev eth0
	ip -n aliasip-hub addr add "$outside_gw6/64" dev out0 nodad
	ip -n "$outside_ns" addr add "$outside_ip6/64" dev eth0 nodad
	ip -n "$outside_ns" link set dev eth0 up
	# The way back goes to the node subnet only, and there is no default
	# route: as on the internet, a packet that arrives with a pod address
	# (10.244.x, 10.64.x, 10.80.x: not masqueraded on its way out) gets no reply.
	ip -n "$outside_ns" route add "$net.0/24" via "$outside_gw" dev eth0
	ip -n "$outside_ns" -6 route add "${net6}/64" via "$outside_gw6" dev eth0
	# Both sysctls are per network namespace: these change the hub's only.
	# ip_forward: the hub routes between vpc0 and out0.
	# rp_filter=0: the hub has no route back to the pod ranges, so reverse
	# path filtering would drop a pod-addressed packet before it reached
	# the outside; it must arrive there to show that it was not
	# masqueraded. The kernel uses the higher of "all" and the
	# interface's value (Documentation/networking/ip-sysctl.rst,
	# rp_filter), so both are cleared.
	ip netns exec aliasip-hub sysctl -qw net.ipv4.ip_forward=1
	# The same for IPv6 (which has no reverse path filter of its own).
	ip netns exec aliasip-hub sysctl -qw net.ipv6.conf.all.forwarding=1
	for c in all default vpc0 out0; do
		ip netns exec aliasip-hub sysctl -qw "net.ipv4.conf.$c.rp_filter=0"
	done
}

# outside_up starts the outside host's services on $outside_ip, logged and
# stopped like the other daemons: netcheck outside (HTTP :80 answers with
# the peer it saw; UDP :9 records each datagram's source by its payload
# token, read back with GET /seen?token=T) and the outside's own DNS
# server, CoreDNS with the zone $outside_zone.
outside_up() {
	local od=$dir/outside
	mkdir -p "$od"
	# On every address of the outside host: $outside_ip and $outside_ip6.
	start outside-netcheck nsenter --net="/run/netns/$outside_ns" \
		"$images/bin/netcheck" outside --http ":80" --udp ":9"
	# An authoritative zone from a zone file (CoreDNS plugin/file): a name
	# not in it is NXDOMAIN, and a query for a zone this server has no
	# block for is REFUSED (coredns core/dnsserver/server.go ServeDNS, no
	# matching zone).
	cat >"$od/db.$outside_zone" <<EOF
\$ORIGIN $outside_zone.
@	3600	IN	SOA	ns.$outside_zone. hostmaster.$outside_zone. 1 7200 3600 1209600 3600
@	3600	IN	NS	ns.$outside_zone.
ns	3600	IN	A	$outside_ip
www	3600	IN	A	$outside_ip
EOF
	cat >"$od/Corefile" <<EOF
$outside_zone:53 {
	errors
	log
	file $od/db.$outside_zone
}
EOF
	start outside-coredns nsenter --net="/run/netns/$outside_ns" "$(bin coredns)" -conf "$od/Corefile"
	wait_for 30 "the outside host's HTTP server" nsenter --net="/run/netns/$outside_ns" curl -sf "http://$outside_ip/healthz"
	wait_for 30 "the outside host's DNS server" outside_dns_answers
	log "outside host $outside_ip (via the hub's $outside_gw): HTTP :80, UDP :9, DNS :53 for $outside_zone"
}

# outside_dns_answers reports whether the outside's DNS server answers
# www.$outside_zone with $outside_ip, asked from a node's address (as
# CoreDNS's queries arrive once masqueraded), or from the outside
# namespace itself before any node exists.
outside_dns_answers() {
	local from=/run/netns/$outside_ns
	[ -e "/run/netns/aliasip-node-1" ] && from=/run/netns/aliasip-node-1
	nsenter --net="$from" "$images/bin/netcheck" lookup --retries 0 --timeout 2s --server "$outside_ip:53" "www.$outside_zone" |
		grep -qx "OK www.$outside_zone -> $outside_ip"
}

node_net() {
	local i=$1 n ns
	n=$(node_name "$i") ns=aliasip-$(node_name "$i")
	ip netns add "$ns"
	ip link add "n$i" mtu 1460 netns aliasip-hub type veth peer name eth0 netns "$ns"
	ip -n aliasip-hub link set dev "n$i" master vpc0 up
	ip -n "$ns" link set dev lo up
	ip -n "$ns" addr add "$(node_ip "$i")/24" dev eth0
	ip -n "$ns" addr add "$(node_ip6 "$i")/64" dev eth0 nodad
	ip -n "$ns" link set dev eth0 up
	# The default route also lets proxy-ARP answer pods for 169.254.1.1.
	ip -n "$ns" route add default via "$net.1" dev eth0
	ip -n "$ns" -6 route add default via "${net6}1" dev eth0
	ip netns exec "$ns" sysctl -qw net.ipv4.conf.eth0.proxy_arp=1
}

# --- node filesystem and cgroups ----------------------------------------

# Each node sees its own copy of the paths the kubelet, containerd, the
# CNI plugin and the chart's hostPath volumes use.
# /run/netns too: containerd keeps its pod network namespaces there, and
# they must go with the node.
node_paths="/var/lib/kubelet /var/log /etc/cni/net.d /opt/cni/bin /var/lib/aliasip /run/aliasip /run/netns"

node_mounts() {
	local i=$1 n nd
	n=$(node_name "$i") nd=$dir/nodes/$(node_name "$i")
	for p in $node_paths; do
		mkdir -p "$nd/fs$p"
		if [ ! -e "$p" ]; then
			mkdir -p "$p"
			echo "$p" >>"$dir/created-host-dirs"
		fi
	done
	mkdir -p "$nd/fs/var/log/pods" "$nd/fs/var/log/containers"
	# containerd 1.6's CRI brings up every sandbox's lo with the CNI
	# loopback plugin from its bin dir (containerd/go-cni WithLoNetwork, a
	# "loopback" plugin config, loaded by containerd's CRI
	# pkg/cri/server/service_linux.go with every CNI config), which is why containerd's release bundles and
	# kind's node image ship it.
	cp /usr/lib/cni/loopback "$nd/fs/opt/cni/bin/loopback"
	# portmap too, as kind's nodes have it (kind's base image installs the
	# reference plugins host-local, loopback, portmap and ptp:
	# kubernetes-sigs/kind images/base/Dockerfile) and GKE's: hostPorts
	# work (the agent chains it). A node without it is tested on its own
	# (test/netns TestBareNodeWithoutPortmap: Warning PortmapMissing).
	cp "$cache/cni/portmap" "$nd/fs/opt/cni/bin/portmap"
	# Its own hostname, in a UTS namespace of its own, as each kind node
	# (a container) has: hostNetwork pods share it (containerd's CRI gives
	# a hostNetwork sandbox the host's UTS namespace), so they report
	# their node's name, which the e2e suite's hostNetwork checks expect.
	touch "$dir/mnt/uts-$n"
	unshare --uts="$dir/mnt/uts-$n" hostname "$n"
	touch "$dir/mnt/$n"
	unshare --mount="$dir/mnt/$n" --propagation private true
	for p in $node_paths; do
		nsenter --mount="$dir/mnt/$n" mount --bind "$nd/fs$p" "$p"
	done
}

cgroup_controllers() {
	for c in /sys/fs/cgroup/*; do
		[ -d "$c" ] && case "$(stat -f -c %T "$c")" in cgroupfs | cgroup2fs) echo "$c" ;; esac
	done
}

node_cgroups() {
	local n
	n=$(node_name "$1")
	for c in $(cgroup_controllers); do
		mkdir -p "$c/aliasip/$n"
		if [ -e "$c/cpuset.cpus" ]; then
			for f in cpuset.cpus cpuset.mems; do
				cat "$c/$f" >"$c/aliasip/$f"
				cat "$c/$f" >"$c/aliasip/$n/$f"
			done
		fi
	done
}

# --- node daemons ---------------------------------------------------------

# in_node I CMD... runs CMD in node I's network and mount namespaces.
# (nsenter, not `ip netns exec`, which mounts a fresh /sys where the
# kubelet finds no cgroups.)
in_node() {
	local n
	n=$(node_name "$1")
	shift
	# shellcheck disable=SC2046 # node_ns prints several flags
	nsenter $(node_ns "$n") "$@"
}

# node_ns NAME prints the nsenter flags of a node's namespaces: network,
# mount and UTS (its hostname).
node_ns() { echo "--net=/run/netns/aliasip-$1 --mount=$dir/mnt/$1 --uts=$dir/mnt/uts-$1"; }

containerd_up() {
	local i=$1 n nd r
	n=$(node_name "$i") nd=$dir/nodes/$(node_name "$i") r=$run/$(node_name "$i")
	mkdir -p "$r" "$nd/containerd"
	cat >"$nd/containerd.toml" <<EOF
version = 2
root = "$nd/containerd/root"
state = "$r/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$r/containerd.sock"
[ttrpc]
  address = "$r/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$nd/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # Built here by hack/images (make images): nothing can be pulled.
  sandbox_image = "docker.io/library/aliasip-pause:$(chart_app_version)"
  # This machine's root lacks CAP_SYS_RESOURCE, so runc cannot lower a
  # container's oom_score_adj below containerd's own (pause asks for -998).
  # containerd clamps it instead (containerd docs/cri/config.md,
  # restrict_oom_score_adj; kind sets it for rootless nodes).
  restrict_oom_score_adj = $(restrict_oom)
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$r/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
EOF
	start "containerd-$n" nsenter $(node_ns "$n") \
		containerd --config "$nd/containerd.toml"
	wait_for 30 "containerd of $n" ctr --address "$r/containerd.sock" version
	load_images "$i"
}

# load_images I imports the image tarballs into node I's containerd (what
# `kind load image-archive` does for a kind node).
load_images() {
	local r
	r=$run/$(node_name "$1")
	for img in "$images"/*.tar; do
		ctr --address "$r/containerd.sock" -n k8s.io images import --snapshotter overlayfs "$img" >/dev/null
	done
}

# restrict_oom prints true when this process cannot lower its oom_score_adj.
restrict_oom() {
	if (echo -998 >/proc/self/oom_score_adj) 2>/dev/null; then echo false; else echo true; fi
}

chart_app_version() { awk -F'"' '/^appVersion:/ {print $2}' "$root/charts/aliasip/Chart.yaml"; }

kubelet_up() {
	local i=$1 n nd
	n=$(node_name "$i") nd=$dir/nodes/$(node_name "$i")
	cat >"$nd/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# As kind names its nodes' instances; aliasip's fake cloud owns this scheme.
providerID: kind://docker/aliasip/$n
# cgroups v1 here: kubelet 1.36 refuses it unless told (KubeletConfiguration
# failCgroupV1, k8s.io/kubelet config/v1beta1 types.go).
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /aliasip/$n
enforceNodeAllocatable: []
failSwapOn: false
# Otherwise each kubelet would check machine-wide sysctls it cannot own;
# hack/cluster.sh sets them once (and restores them on down).
protectKernelDefaults: false
containerRuntimeEndpoint: unix://$run/$n/containerd.sock
address: $(node_ip "$i")
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $dir/pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
# The cluster DNS Service (dns_up) is every ClusterFirst pod's only
# nameserver; without it the kubelet falls back to dnsPolicy Default with a
# MissingClusterDNS Warning per pod (KubeletConfiguration clusterDNS,
# k8s.io/kubelet config/v1beta1 types.go; pkg/kubelet/network/dns/dns.go).
clusterDNS: [$dns_ip]
# The base of every pod's DNS configuration, and all of it for dnsPolicy
# Default pods such as CoreDNS (KubeletConfiguration resolvConf, default
# /etc/resolv.conf): this node's network's resolver, the outside's, where
# CoreDNS forwards what is not cluster.local (forward . /etc/resolv.conf),
# as kind's CoreDNS forwards to its node's resolver.
resolvConf: $nd/resolv.conf
serializeImagePulls: false
# The machine's disk is shared by every node: no disk-pressure evictions.
evictionHard: {memory.available: "100Mi", nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%"}
imageGCHighThresholdPercent: 100
EOF
	echo "nameserver $outside_ip" >"$nd/resolv.conf"
	if [ "$(node_pool "$i")" = pool-b ]; then
		# As GKE sets a pool's max pods per node on its kubelets, to what
		# the pool's blocks hold (KubeletConfiguration maxPods, default
		# 110: k8s.io/kubelet config/v1beta1 types.go).
		echo "maxPods: $pool_b_max_pods" >>"$nd/kubelet.yaml"
	fi
	# The pool label is set by the kubelet when it registers (kubelet
	# --node-labels, https://kubernetes.io/docs/reference/command-line-tools-reference/kubelet/);
	# NodeRestriction lets a kubelet set labels outside the kubernetes.io
	# and k8s.io namespaces on its own Node
	# (https://kubernetes.io/docs/reference/access-authn-authz/admission-controllers/#noderestriction).
	start "kubelet-$n" nsenter $(node_ns "$n") \
		"$(bin kubelet)" --config "$nd/kubelet.yaml" --kubeconfig "$nd/kubelet.kubeconfig" \
		--hostname-override "$n" --node-ip "$(node_ip "$i"),$(node_ip6 "$i")" \
		--node-labels "cloud.google.com/gke-nodepool=$(node_pool "$i")" --v 1
}

kube_proxy_mode() { if [ "$(node_pool "$1")" = pool-b ]; then echo nftables; else echo iptables; fi; }

kube_proxy_up() {
	local i=$1 n nd
	n=$(node_name "$i") nd=$dir/nodes/$(node_name "$i")
	cat >"$nd/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
# pool-a's kube-proxies run in iptables mode, pool-b's in nftables mode (GA
# since Kubernetes 1.33: https://kubernetes.io/docs/reference/networking/virtual-ips/#proxy-mode-nftables;
# it drives the kernel through the nft binary, sigs.k8s.io/knftables), so
# the agents' own nftables table is tested beside both.
mode: $(kube_proxy_mode "$i")
# Pod traffic is told from other traffic by the interface it comes in on
# (aliasip's host veths are ali<hash>), not by one clusterCIDR, which cannot
# name both pod ranges: with clusterCIDR, pool-b's pods would be SNATed to
# their node's address on the way to a Service. kube-proxy then matches
# "-i ali+" (KubeProxyConfiguration detectLocalMode InterfaceNamePrefix:
# k8s.io/kube-proxy config/v1alpha1 types.go DetectLocalConfiguration;
# k8s.io/kubernetes pkg/proxy/util/localdetector.go
# NewDetectLocalByInterfaceNamePrefix), as Calico's users set it to "cali".
detectLocalMode: InterfaceNamePrefix
detectLocal: {interfaceNamePrefix: ali}
hostnameOverride: $n
bindAddress: $(node_ip "$i")
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
clientConnection: {kubeconfig: $dir/kube-proxy.kubeconfig}
# nf_conntrack_max is machine-wide: leave it alone.
conntrack: {maxPerCore: 0}
EOF
	start "kube-proxy-$n" nsenter $(node_ns "$n") \
		"$(bin kube-proxy)" --config "$nd/kube-proxy.yaml" --v 1
}

# --- control plane ----------------------------------------------------------

control_plane_up() {
	start etcd etcd --data-dir "$dir/etcd" \
		--listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
		--listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
		--initial-cluster default=http://127.0.0.1:23800
	wait_for 30 etcd curl -sf http://127.0.0.1:23790/health
	local p=$dir/pki
	start kube-apiserver "$(bin kube-apiserver)" --etcd-servers http://127.0.0.1:23790 \
		--bind-address "$api_ip" --advertise-address "$api_ip" --secure-port "$api_port" \
		--tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
		--client-ca-file "$p/ca.crt" --token-auth-file "$p/tokens.csv" \
		--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
		--service-cluster-ip-range "$service_cidr,$service_cidr6" --allow-privileged=true \
		--kubelet-preferred-address-types InternalIP \
		--kubelet-client-certificate "$p/kubelet-client.crt" --kubelet-client-key "$p/kubelet-client.key" \
		--profiling=false --v 1
	wait_for 90 kube-apiserver curl -sf --cacert "$p/ca.crt" "https://$api_ip:$api_port/readyz"
	# No --allocate-node-cidrs: aliasip-controller gives nodes their podCIDRs,
	# as in a kind cluster configured for aliasip (hack/kind/kind-config.yaml).
	start kube-controller-manager "$(bin kube-controller-manager)" --kubeconfig "$dir/kcm.kubeconfig" \
		--use-service-account-credentials --service-account-private-key-file "$p/sa.key" \
		--root-ca-file "$p/ca.crt" --cluster-signing-cert-file "$p/ca.crt" --cluster-signing-key-file "$p/ca.key" \
		--leader-elect=false --bind-address 127.0.0.1 --secure-port 10357 --profiling=false --v 1
	start kube-scheduler "$(bin kube-scheduler)" --kubeconfig "$dir/scheduler.kubeconfig" \
		--authentication-kubeconfig "$dir/scheduler.kubeconfig" --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
		--leader-elect=false --bind-address 127.0.0.1 --secure-port 10359 --profiling=false --v 1
}

# The kubelets set these machine-wide (kubelet/cm/container_manager_linux.go
# setupKernelTunables) unless protectKernelDefaults; set once, restore on down.
kernel_sysctls="vm.overcommit_memory=1 kernel.panic=10 kernel.panic_on_oops=1"

sysctls_up() {
	: >"$dir/sysctls.saved"
	for kv in $kernel_sysctls; do
		k=${kv%%=*}
		echo "$k=$(sysctl -n "$k")" >>"$dir/sysctls.saved"
		sysctl -qw "$kv"
	done
}

# status prints "down", "up" or "stale". A cluster is stale when its
# marker is there but it cannot be running: the machine was rebooted since
# (the marker holds the boot id it came up under) or none of the processes
# it started is alive (a run killed before it could tear down).
status() {
	[ -e "$dir/up" ] || { echo down; return; }
	local boot f pid
	boot=$(cat /proc/sys/kernel/random/boot_id)
	if [ "$(cat "$dir/up")" != "$boot" ]; then echo stale; return; fi
	for f in "$dir"/pids/*; do
		[ -f "$f" ] || continue
		pid=$(cat "$f")
		if kill -0 "$pid" 2>/dev/null; then echo up; return; fi
	done
	echo stale
}

up() {
	[ "$(id -u)" = 0 ] || die "needs root"
	case $(status) in
	up) die "a cluster is already up in $dir: run make cluster-down first" ;;
	stale)
		log "the cluster in $dir is stale (from an earlier boot, or none of its processes runs): tearing it down first"
		down
		;;
	esac
	for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl helm coredns; do
		[ -x "$(bin "$b")" ] || die "$(bin "$b") missing: run make deps"
	done
	for b in etcd containerd runc ctr openssl curl nft; do
		command -v "$b" >/dev/null || die "$b missing: run make deps"
	done
	ls "$images"/aliasip.tar "$images"/aliasip-netcheck.tar "$images"/aliasip-pause.tar "$images"/coredns.tar >/dev/null 2>&1 ||
		die "image tarballs missing in $images: run make images"
	# The outside host runs the netcheck binary make images built for the
	# aliasip-netcheck image.
	[ -x "$images/bin/netcheck" ] || die "$images/bin/netcheck missing: run make images"
	ip netns list | grep -q '^aliasip-' && die "leftover aliasip-* namespaces: run make cluster-down first"

	mkdir -p "$dir"/{logs,pids,mnt,nodes} "$run"
	cat /proc/sys/kernel/random/boot_id >"$dir/up"
	# The node mount namespaces are bound to files here, which needs a
	# private mount.
	mount --bind "$dir/mnt" "$dir/mnt"
	mount --make-private "$dir/mnt"
	log "Kubernetes $k8s_version, $nodes nodes in pool-a, $pool_b_nodes in pool-b and $pool_g_nodes in pool-g, state in $dir"
	sysctls_up
	pki
	credentials
	hub
	outside_net
	outside_up
	control_plane_up
	log "control plane up at https://$api_ip:$api_port"
	for i in $(seq 1 "$total"); do
		node_net "$i"
		node_mounts "$i"
		node_cgroups "$i"
		containerd_up "$i"
		[ "$(node_pool "$i")" = pool-a ] || continue
		node_daemons_up "$i"
	done
	for i in $(seq 1 "$nodes"); do
		wait_for 120 "node $(node_name "$i") to register" kubectl_ get node "$(node_name "$i")"
	done
	log "installing charts/aliasip (as the README's kind section does)"
	"$(bin helm)" --kubeconfig "$dir/kubeconfig" install aliasip "$root/charts/aliasip" -n kube-system \
		--set cloud=fake --set clusterCIDR="$cluster_cidr" --set ipv6.enabled=true --set ipv6.range="$ipv6_range" \
		--set image.pullPolicy=Never --wait --timeout 3m >&2 ||
		{ diagnose; die "helm install failed (logs in $dir/logs)"; }
	if [ "$pool_b_nodes" -gt 0 ]; then
		pool_b_up
	fi
	if [ "$pool_g_nodes" -gt 0 ]; then
		pool_g_up
	fi
	kubectl_ wait --for=condition=Ready nodes --all --timeout=120s >&2 || { diagnose; die "nodes not Ready"; }
	dns_up
	kubectl_ get nodes -o custom-columns='NAME:.metadata.name,STATUS:.status.conditions[-1].type,POOL:.metadata.labels.cloud\.google\.com/gke-nodepool,RANGE:.metadata.labels.aliasip\.io/pod-range,PODCIDRS:.spec.podCIDRs,PROVIDERID:.spec.providerID' >&2
	kubectl_ get podranges >&2
	echo "KUBECONFIG=$dir/kubeconfig"
}

node_daemons_up() {
	kubelet_up "$1"
	kube_proxy_up "$1"
	log "$(node_name "$1") ($(node_pool "$1")): containerd, kubelet, kube-proxy started at $(node_ip "$1")"
}

# pool_b_up adds the second node pool the way one is added to a running
# cluster: its PodRange first (the chart has installed the CRD), then, once
# the controller reports the range Ready, the pool's kubelets. A node
# registering before the controller knew the range would get a block of
# the default range, and keep it.
pool_b_up() {
	# A CRD serves its kind once its Established condition is True
	# (https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#create-a-customresourcedefinition);
	# kubectl wait --for=condition=X polls an object's status.conditions
	# (https://kubernetes.io/docs/reference/kubectl/generated/kubectl_wait/).
	kubectl_ wait --for=condition=Established crd/podranges.aliasip.io --timeout=60s >&2 ||
		die "the chart's PodRange CRD is not established"
	kubectl_ apply -f - >&2 <<EOF
apiVersion: aliasip.io/v1alpha1
kind: PodRange
metadata: {name: $pool_b_range}
spec:
  cidr: $pool_b_cidr
  nodeSelector: {matchLabels: {cloud.google.com/gke-nodepool: pool-b}}
  maxPodsPerNode: $pool_b_max_pods
EOF
	pool_nodes_up "$pool_b_range" $((nodes + 1)) $((nodes + pool_b_nodes))
}

# pool_g_up adds the growable pool the same way: its PodRange
# (spec.growth: /28 blocks, at most pool_g_max_blocks per node, an empty
# extra block given back after pool_g_return_after seconds; the low-water
# mark is the default, half a block), then its kubelets (the kubelet's
# default maxPods, 110, which the blocks can reach).
pool_g_up() {
	kubectl_ apply -f - >&2 <<EOF
apiVersion: aliasip.io/v1alpha1
kind: PodRange
metadata: {name: $pool_g_range}
spec:
  cidr: $pool_g_cidr
  nodeSelector: {matchLabels: {cloud.google.com/gke-nodepool: pool-g}}
  maskSize: $pool_g_mask
  growth: {maxBlocksPerNode: $pool_g_max_blocks, returnAfterSeconds: $pool_g_return_after}
EOF
	pool_nodes_up "$pool_g_range" $((nodes + pool_b_nodes + 1)) "$total"
}

# pool_nodes_up RANGE FIRST LAST waits for the PodRange RANGE to be Ready,
# then starts the kubelets of nodes FIRST..LAST and waits for them to
# register.
pool_nodes_up() {
	local rng=$1 first=$2 last=$3
	kubectl_ wait --for=condition=Ready "podrange/$rng" --timeout=60s >&2 ||
		{ kubectl_ get podrange "$rng" -o yaml >&2; die "PodRange $rng not Ready"; }
	for i in $(seq "$first" "$last"); do
		node_daemons_up "$i"
	done
	for i in $(seq "$first" "$last"); do
		wait_for 120 "node $(node_name "$i") to register" kubectl_ get node "$(node_name "$i")"
	done
}

# coredns_version prints the version of the CoreDNS make deps built, which
# is the tag make images gave its image ("CoreDNS-1.15.0" -> 1.15.0).
coredns_version() { "$(bin coredns)" -version | sed -n 's/^CoreDNS-//p'; }

# dns_up deploys the cluster DNS as kubeadm's CoreDNS addon does, which is
# how kind's clusters get theirs (kind runs kubeadm init, whose addon phase
# applies it): the manifests of kubernetes
# cmd/kubeadm/app/phases/addons/dns/manifests.go (v1.36.3), with
# {{ .DNSDomain }} cluster.local, {{ .DNSIP }} $dns_ip, 2 replicas
# (kubeadm's default), the image make images wrote under kubeadm's name
# (cmd/kubeadm/app/images/images.go GetDNSImage:
# registry.k8s.io/coredns/coredns), and the control-plane taint's key. It
# runs once the chart is installed: its pods need the pod network.
dns_up() {
	log "deploying CoreDNS $(coredns_version) as the cluster DNS at $dns_ip (kubeadm's addon manifests)"
	kubectl_ apply -f - >&2 <<EOF
apiVersion: v1
kind: ServiceAccount
metadata:
  name: coredns
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:coredns
subjects:
- kind: ServiceAccount
  name: coredns
  namespace: kube-system
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: coredns
  namespace: kube-system
data:
  Corefile: |
    .:53 {
        errors
        health {
           lameduck 5s
        }
        ready
        kubernetes cluster.local in-addr.arpa ip6.arpa {
           pods insecure
           fallthrough in-addr.arpa ip6.arpa
           ttl 30
        }
        prometheus :9153
        forward . /etc/resolv.conf {
           max_concurrent 1000
        }
        cache 30 {
           disable success cluster.local
           disable denial cluster.local
        }
        loop
        reload
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels:
    k8s-app: kube-dns
spec:
  replicas: 2
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 1
  selector:
    matchLabels:
      k8s-app: kube-dns
  template:
    metadata:
      labels:
        k8s-app: kube-dns
    spec:
      priorityClassName: system-cluster-critical
      serviceAccountName: coredns
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              labelSelector:
                matchExpressions:
                - key: k8s-app
                  operator: In
                  values: ["kube-dns"]
              topologyKey: kubernetes.io/hostname
      tolerations:
      - key: CriticalAddonsOnly
        operator: Exists
      - key: node-role.kubernetes.io/control-plane
        effect: NoSchedule
      nodeSelector:
        kubernetes.io/os: linux
      containers:
      - name: coredns
        image: registry.k8s.io/coredns/coredns:v$(coredns_version)
        imagePullPolicy: IfNotPresent
        resources:
          limits:
            memory: 170Mi
          requests:
            cpu: 100m
            memory: 70Mi
        args: [ "-conf", "/etc/coredns/Corefile" ]
        volumeMounts:
        - name: config-volume
          mountPath: /etc/coredns
          readOnly: true
        ports:
        - containerPort: 53
          name: dns
          protocol: UDP
        - containerPort: 53
          name: dns-tcp
          protocol: TCP
        - containerPort: 9153
          name: metrics
          protocol: TCP
        - containerPort: 8080
          name: liveness-probe
          protocol: TCP
        - containerPort: 8181
          name: readiness-probe
          protocol: TCP
        livenessProbe:
          httpGet:
            path: /health
            port: liveness-probe
            scheme: HTTP
          initialDelaySeconds: 60
          timeoutSeconds: 5
          successThreshold: 1
          failureThreshold: 5
        readinessProbe:
          httpGet:
            path: /ready
            port: readiness-probe
            scheme: HTTP
        securityContext:
          allowPrivilegeEscalation: false
          capabilities:
            add:
            - NET_BIND_SERVICE
            drop:
            - ALL
          readOnlyRootFilesystem: true
      dnsPolicy: Default
      volumes:
        - name: config-volume
          configMap:
            name: coredns
            items:
            - key: Corefile
              path: Corefile
---
# kubeadm's Service also sets resourceVersion "0", for its own
# create-or-update; an object to be created must not have one, so it is
# left out here.
apiVersion: v1
kind: Service
metadata:
  labels:
    k8s-app: kube-dns
    kubernetes.io/cluster-service: "true"
    kubernetes.io/name: "CoreDNS"
  name: kube-dns
  namespace: kube-system
  annotations:
    prometheus.io/port: "9153"
    prometheus.io/scrape: "true"
spec:
  clusterIP: $dns_ip
  ports:
  - name: dns
    port: 53
    protocol: UDP
    targetPort: 53
  - name: dns-tcp
    port: 53
    protocol: TCP
    targetPort: 53
  - name: metrics
    port: 9153
    protocol: TCP
    targetPort: 9153
  selector:
    k8s-app: kube-dns
EOF
	# Ready once the kubernetes plugin has synced with the API server
	# (CoreDNS plugin/ready: every plugin that reports readiness is ready).
	kubectl_ -n kube-system rollout status deployment/coredns --timeout=3m >&2 ||
		{ diagnose; die "CoreDNS did not roll out"; }
}

diagnose() {
	kubectl_ get nodes -o wide >&2 || true
	kubectl_ get pods -A -o wide >&2 || true
	kubectl_ -n kube-system get deployment/coredns service/kube-dns >&2 || true
	kubectl_ -n kube-system logs -l k8s-app=kube-dns --tail 10 --prefix >&2 || true
	kubectl_ get events -A --sort-by=.lastTimestamp 2>/dev/null | tail -25 >&2 || true
}

# --- teardown ---------------------------------------------------------------

# kill_ns_procs NSFILE KIND kills every process whose KIND namespace is the
# one bound at NSFILE (containerd, kubelet, shims, containers).
kill_ns_procs() {
	local want
	want=$(stat -L -c %i "$1" 2>/dev/null) || return 0
	for sig in TERM KILL; do
		local pids=()
		for p in /proc/[0-9]*; do
			[ "$(stat -L -c %i "$p/ns/$2" 2>/dev/null)" = "$want" ] && pids+=("${p#/proc/}")
		done
		[ ${#pids[@]} -eq 0 ] && return 0
		kill -s "$sig" "${pids[@]}" 2>/dev/null || true
		[ "$sig" = TERM ] && sleep 2
	done
	sleep 0.5
}

# kill_cgroup_procs NODE kills every process in the node's cgroups.
kill_cgroup_procs() {
	local pids
	for _ in $(seq 1 20); do
		pids=$(find /sys/fs/cgroup/*/aliasip/"$1" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
		[ -z "$pids" ] && return 0
		# shellcheck disable=SC2086
		kill -KILL $pids 2>/dev/null || true
		sleep 0.25
	done
	log "warning: processes left in the cgroups of $1: $pids"
}

stop_pid() {
	local f=$dir/pids/$1
	[ -f "$f" ] || return 0
	local pid
	pid=$(cat "$f")
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		# kube-apiserver may ignore SIGTERM once it stopped listening.
		for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$f"
}

# node_down NAME stops a node the way a VM goes away: its daemons and every
# process in its namespaces (containers and shims included), then its
# mounts, cgroups and network namespace.
node_down() {
	local n=$1
	stop_pid "kubelet-$n"
	stop_pid "kube-proxy-$n"
	stop_pid "containerd-$n"
	kill_ns_procs "$dir/mnt/$n" mnt
	[ -e "/run/netns/aliasip-$n" ] && kill_ns_procs "/run/netns/aliasip-$n" net
	# Containers have mount and network namespaces of their own, but every
	# one lives in the node's cgroup subtree.
	kill_cgroup_procs "$n"
	umount "$dir/mnt/$n" "$dir/mnt/uts-$n" 2>/dev/null || true
	rm -f "$dir/mnt/$n" "$dir/mnt/uts-$n"
	ip netns del "aliasip-$n" 2>/dev/null || true
	for c in $(cgroup_controllers); do
		[ -d "$c/aliasip/$n" ] && find "$c/aliasip/$n" -depth -type d -exec rmdir {} + 2>/dev/null || true
	done
}

down() {
	[ "$(id -u)" = 0 ] || die "needs root"
	log "tearing down the cluster in $dir"
	# Nodes first: their daemons and every process in their namespaces
	# (containers and shims included), then their mounts and cgroups.
	for f in "$dir"/mnt/node-*; do
		[ -e "$f" ] || continue
		node_down "$(basename "$f")"
	done
	for ns in $(ip netns list 2>/dev/null | awk '/^aliasip-node-/ {print $1}'); do
		kill_ns_procs "/run/netns/$ns" net
		ip netns del "$ns" 2>/dev/null || true
	done
	for c in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_pid "$c"; done
	# The outside host: its daemons, then its namespace (which takes its
	# eth0 and the hub's out0, the other end, along).
	for c in outside-netcheck outside-coredns; do stop_pid "$c"; done
	if [ -e "/run/netns/$outside_ns" ]; then
		kill_ns_procs "/run/netns/$outside_ns" net
		ip netns del "$outside_ns" 2>/dev/null || true
	fi
	ip netns del aliasip-hub 2>/dev/null || true # takes vpchost0 and its route along
	ip link del vpchost0 2>/dev/null || true
	for c in $(cgroup_controllers); do
		[ -d "$c/aliasip" ] && find "$c/aliasip" -depth -type d -exec rmdir {} + 2>/dev/null || true
	done
	if [ -f "$dir/sysctls.saved" ]; then
		while read -r kv; do sysctl -qw "$kv" || true; done <"$dir/sysctls.saved"
	fi
	# Anything still mounted under the state directory (nothing should be).
	if [ -d "$dir" ]; then
		grep -o " $dir[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
	fi
	if [ -f "$dir/created-host-dirs" ]; then
		sort -r "$dir/created-host-dirs" | while read -r p; do rmdir "$p" 2>/dev/null || true; done
	fi
	rm -rf "$dir" "$run"
	log "down"
}

case "${1:-}" in
up) up ;;
down) down ;;
status) status ;;
load-images)
	# After `make images`: every node gets the new images (then restart the
	# pods that use them, e.g. kubectl rollout restart).
	for f in "$dir"/mnt/node-*; do
		[ -e "$f" ] || continue
		n=$(basename "$f")
		load_images "${n#node-}"
		log "$n: images loaded"
	done
	;;
remove-node)
	# The node's VM is gone (its Node object stays until someone deletes it).
	[ -n "${2:-}" ] && [ -e "$dir/mnt/$2" ] || die "usage: $0 remove-node NAME (a node of the running cluster)"
	node_down "$2"
	log "$2 removed"
	;;
*)
	echo "usage: $0 up|down|status|load-images|remove-node NAME   (NODES=3 POOL_B_NODES=1, ALIASIP_CLUSTER_DIR=/var/lib/aliasip-cluster)" >&2
	exit 2
	;;
esac
