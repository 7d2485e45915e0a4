#!/usr/bin/env bash
# Kubernetes' own network conformance tests against the real-node cluster
# (make cluster), with e2e.test and its images built here (hack/deps.sh,
# hack/images) — nothing pulled.
#
#   hack/conformance.sh [conformance|dualstack|more|full]
#
#   conformance  [sig-network] tests tagged [Conformance] (make test runs this)
#   dualstack    [sig-network] [Feature:IPv6DualStack]: the cluster is
#                dual-stack (make test runs this too)
#   more         [sig-network] Networking Granular Checks and [sig-network]
#                Services
#   full         conformance, dualstack, then more (make conformance)
#
# Uses the cluster in ALIASIP_CLUSTER_DIR when one is up; otherwise brings
# one up and takes it down at the end. JUnit reports and logs go to
# ALIASIP_CONFORMANCE_DIR (default bin/conformance). The last line is
# "conformance: N passed, M failed" (exit 1 if any failed or none ran).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${ALIASIP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aliasip}
dir=${ALIASIP_CLUSTER_DIR:-/var/lib/aliasip-cluster}
out=${ALIASIP_CONFORMANCE_DIR:-$root/bin/conformance}
mode=${1:-conformance}

# What is skipped, and why (the README's Conformance section lists the
# same). e2e.test runs the specs one at a time here, so [Serial] specs run
# too, except:
# - [Disruptive]: they reboot or partition nodes over SSH or through a
#   cloud provider (--provider=local has neither);
# - [Feature:...] and [FeatureGate:...]: opt-in features, not part of the
#   selected suites by definition; the one opt-in feature this cluster
#   has, [Feature:IPv6DualStack], runs in its own pass (dualstack), where
#   only its tests are selected;
# - [Flaky]: upstream marks them as not to be relied on;
# - the specs needing a LoadBalancer or an external cloud IP: no cloud
#   provider answers Services of type LoadBalancer here;
# - [Serial] specs that load kernel modules (sctp) on the nodes: the nodes
#   share this machine's kernel.
skip='\[Disruptive\]|\[Feature:[^]]+\]|\[FeatureGate:[^]]+\]|\[Flaky\]|LoadBalancer|\[Serial\].*SCTP|SCTP.*\[Serial\]'
focus_conformance='\[sig-network\].*\[Conformance\]'
focus_more='\[sig-network\] (Networking Granular Checks|Services)'
focus_dualstack='\[sig-network\].*\[Feature:IPv6DualStack\]'
# The dual-stack pass selects an opt-in feature on purpose: the same skips
# but the one for [Feature:...], save [Feature:SCTPConnectivity] (SCTP
# needs the sctp module loaded into this machine's shared kernel).
skip_dualstack='\[Disruptive\]|\[Feature:SCTPConnectivity\]|\[FeatureGate:[^]]+\]|\[Flaky\]|LoadBalancer|\[Serial\].*SCTP|SCTP.*\[Serial\]'

log() { echo "conformance: $*" >&2; }

for f in e2e.test kubectl; do
	[ -x "$cache/bin/$f" ] || { log "$cache/bin/$f missing: run make deps"; exit 1; }
done

brought_up=false
if [ "$(ALIASIP_CLUSTER_DIR=$dir "$root/hack/cluster.sh" status)" != up ]; then
	log "no cluster running in $dir: bringing one up (hack/cluster.sh up)"
	"$root/hack/cluster.sh" up >/dev/null
	brought_up=true
fi
cleanup() { if $brought_up; then "$root/hack/cluster.sh" down >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT

nodes=$("$cache/bin/kubectl" --kubeconfig "$dir/kubeconfig" get nodes --no-headers | wc -l)
mkdir -p "$out"
passed=0 failed=0

# run NAME FOCUS [SKIP] runs e2e.test once and adds its counts (ginkgo's
# summary).
run() {
	local name=$1 focus=$2 skip=${3:-$skip} report=$out/$1
	rm -rf "$report" && mkdir -p "$report"
	log "$name: --ginkgo.focus='$focus' --ginkgo.skip='$skip' ($nodes nodes; log in $report/e2e.log)"
	local start=$SECONDS rc=0
	# --provider=local: a cluster with no cloud provider, as kind's
	# conformance runs use (kubernetes test/e2e/framework/provider.go; kind's
	# hack/ci/e2e-k8s.sh). --report-dir writes junit_01.xml.
	# --kubectl-path: the tests exec kubectl; ours, v1.36.3, not whatever
	# kubectl is first on PATH.
	"$cache/bin/e2e.test" --kubeconfig "$dir/kubeconfig" --provider=local --num-nodes="$nodes" \
		--kubectl-path="$cache/bin/kubectl" \
		--report-dir="$report" --ginkgo.focus="$focus" --ginkgo.skip="$skip" \
		--ginkgo.timeout=2h --ginkgo.no-color --ginkgo.v >"$report/e2e.log" 2>&1 || rc=$?
	# Ginkgo's summary line: "SUCCESS! -- 47 Passed | 0 Failed | 0 Pending
	# | 7532 Skipped" (FAIL! -- ... when any failed). The JUnit report
	# (junit_01.xml) also counts the suite's setup and teardown nodes.
	local summary ok bad
	summary=$(grep -Eo '[0-9]+ Passed \| [0-9]+ Failed' "$report/e2e.log" | tail -1 || true)
	if [ -z "$summary" ] || ! ls "$report"/junit*.xml >/dev/null 2>&1; then
		log "$name: no summary or no JUnit report (e2e.test exit $rc); last lines of its log:"
		tail -20 "$report/e2e.log" >&2
		failed=$((failed + 1))
		return
	fi
	ok=${summary%% Passed*}
	bad=${summary##*| }
	bad=${bad%% Failed}
	log "$name: $ok passed, $bad failed ($((SECONDS - start))s, e2e.test exit $rc); JUnit in $report"
	grep -E '^\s*\[FAIL\]' "$report/e2e.log" | sort -u | head -20 >&2 || true
	passed=$((passed + ok))
	failed=$((failed + bad))
	if [ "$rc" != 0 ] && [ "$bad" = 0 ]; then failed=$((failed + 1)); fi
}

case "$mode" in
conformance) run conformance "$focus_conformance" ;;
dualstack) run dualstack "$focus_dualstack" "$skip_dualstack" ;;
more) run granular-and-services "$focus_more" ;;
full)
	run conformance "$focus_conformance"
	run dualstack "$focus_dualstack" "$skip_dualstack"
	run granular-and-services "$focus_more"
	;;
*)
	echo "usage: $0 [conformance|dualstack|more|full]" >&2
	exit 2
	;;
esac
echo "conformance: $passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
