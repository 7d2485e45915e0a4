package kubelet

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/node-agent/agent"
)

// TestSecondNodePool: pool-b's node, added to the running cluster after
// its PodRange (hack/cluster.sh), has a block of pool-b's range with
// pool-b's mask and the label aliasip.io/pod-range=pool-b; pool-a's nodes
// have /24s of the default range labelled default; the PodRange's status
// counts pool-b's node and block; pods on a pool-b node get addresses of
// that range and reach pods on a pool-a node, and back, with their own
// addresses (no SNAT between the ranges, neither pod to pod nor through a
// ClusterIP Service).
func TestSecondNodePool(t *testing.T) {
	e, ctx := setup(t, 8*time.Minute)
	if len(e.PoolB) == 0 {
		t.Fatal("the cluster has no pool-b node")
	}
	defaultRange, bRange := netip.MustParsePrefix(defaultCIDR), netip.MustParsePrefix(poolBCIDR)
	var poolA []string
	for _, name := range e.Nodes {
		n, err := e.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pool, wantRange, wantName, wantMask := "pool-a", defaultRange, v1alpha1.DefaultRangeName, defaultMask
		switch {
		case e.inPoolB(name):
			pool, wantRange, wantName, wantMask = "pool-b", bRange, poolBRange, poolBMask
		case e.inPoolG(name):
			pool, wantRange, wantName, wantMask = "pool-g", netip.MustParsePrefix(poolGCIDR), poolGRange, poolGMask
		default:
			poolA = append(poolA, name)
		}
		if got := n.Labels[poolLabel]; got != pool {
			t.Errorf("%s: label %s=%q, want %q (kubelet --node-labels)", name, poolLabel, got, pool)
		}
		if got := n.Labels[v1alpha1.NodeLabel]; got != wantName {
			t.Errorf("%s (%s): label %s=%q, want %q", name, pool, v1alpha1.NodeLabel, got, wantName)
		}
		cidr, err := netip.ParsePrefix(n.Spec.PodCIDR)
		if err != nil {
			t.Errorf("%s: podCIDR %q: %v", name, n.Spec.PodCIDR, err)
			continue
		}
		if !wantRange.Contains(cidr.Addr()) || cidr.Bits() != wantMask {
			t.Errorf("%s (%s): podCIDR %s, want a /%d of %s", name, pool, cidr, wantMask, wantRange)
		}
		// The cluster is dual-stack (hack/cluster.sh): a pool's range is
		// the IPv4 side; the IPv6 /112 comes from the node's NIC, whatever
		// its pool.
		if len(n.Spec.PodCIDRs) != 2 || n.Spec.PodCIDRs[0] != n.Spec.PodCIDR {
			t.Errorf("%s: podCIDRs %v, want [%s, an IPv6 /112]", name, n.Spec.PodCIDRs, n.Spec.PodCIDR)
		} else if p6, err := netip.ParsePrefix(n.Spec.PodCIDRs[1]); err != nil || !p6.Addr().Is6() || p6.Bits() != 112 {
			t.Errorf("%s: podCIDRs[1] %q, want an IPv6 /112", name, n.Spec.PodCIDRs[1])
		}
		if e.inPoolB(name) {
			// The kubelet's maxPods is the Node's pods capacity
			// (kubelet pkg/kubelet/nodestatus/setters.go MachineInfo).
			if got := n.Status.Capacity.Pods().Value(); got != poolBMaxPods {
				t.Errorf("%s: pods capacity %d, want the pool's kubelet maxPods %d", name, got, poolBMaxPods)
			}
			// A /26 holds 32 pods: the agent has nothing to warn about
			// (it would with the kubelet's default of 110).
			evs, err := e.Client.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name + ",reason=" + agent.EventMaxPodsExceedBlock})
			if err != nil {
				t.Fatal(err)
			}
			if len(evs.Items) > 0 {
				t.Errorf("%s: %s: %s", name, agent.EventMaxPodsExceedBlock, evs.Items[0].Message)
			}
		}
	}
	if len(poolA) == 0 {
		t.Fatal("no pool-a node left")
	}

	// The status counts what the nodes hold; it is refreshed after the
	// nodes' patches, so poll.
	total := int64(1) << (poolBMask - bRange.Bits())
	var last string
	eventually(t, ctx, time.Minute, "PodRange "+poolBRange+" status", func() (bool, error) {
		pr, err := e.Ranges.AliasipV1alpha1().PodRanges().Get(ctx, poolBRange, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		st := pr.Status
		ready := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionReady)
		exhausted := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionExhausted)
		last = fmt.Sprintf("generation %d, status %+v", pr.Generation, st)
		want := int64(len(e.PoolB))
		return st.ObservedGeneration == pr.Generation && st.CIDR == poolBCIDR && st.MaskSize == poolBMask &&
			st.BlocksTotal == total && st.BlocksUsed == want && st.BlocksFree == total-want && st.Nodes == want &&
			ready != nil && ready.Status == metav1.ConditionTrue && ready.Reason == v1alpha1.ReasonValid &&
			exhausted != nil && exhausted.Status == metav1.ConditionFalse && exhausted.Reason == v1alpha1.ReasonBlocksAvailable, nil
	})
	t.Logf("PodRange %s: %s", poolBRange, last)

	// Pods spread over both pools.
	pods := ensureNetcheck(t, ctx, e, int32(2*len(e.Nodes)))
	var onA, onB []corev1.Pod
	for _, p := range pods {
		ip := netip.MustParseAddr(p.Status.PodIP)
		want := defaultRange
		switch {
		case e.inPoolB(p.Spec.NodeName):
			want = bRange
			onB = append(onB, p)
		case e.inPoolG(p.Spec.NodeName):
			want = netip.MustParsePrefix(poolGCIDR)
		default:
			onA = append(onA, p)
		}
		if cidr := nodeBlocks(t, ctx, e, p.Spec.NodeName); !want.Contains(ip) || !cidr.Contains(ip) {
			t.Errorf("pod %s on %s has %s, want an address of %s inside the node's %s", p.Name, p.Spec.NodeName, ip, want, cidr)
		}
	}
	if len(onA) == 0 || len(onB) == 0 {
		t.Fatalf("netcheck pods on pool-a: %d, on pool-b: %d; want some on each", len(onA), len(onB))
	}

	svc := ensureNetcheckService(t, ctx, e)
	// From pool-b: every pool-a pod, and the Service (several answers).
	urls := podURLs(onA)
	for range 4 {
		urls = append(urls, fmt.Sprintf("http://%s/", svc))
	}
	checkSeenFromOwnIP(t, ctx, e, e.PoolB[0], "pool-b-to-a", bRange, urls)
	// From pool-a: every pool-b pod.
	checkSeenFromOwnIP(t, ctx, e, poolA[0], "pool-a-to-b", defaultRange, podURLs(onB))
}

// checkSeenFromOwnIP runs a netcheck Job on node that GETs urls; every GET
// must succeed and be seen by the server as coming from one address inside
// the node's podCIDR and the range want: the Job pod's own, not rewritten
// to the node's (192.168.90.x) on the way.
func checkSeenFromOwnIP(t *testing.T, ctx context.Context, e *clusterEnv, node, job string, want netip.Prefix, urls []string) {
	t.Helper()
	logs := runJobOn(t, ctx, e, node, job, append([]string{"get"}, urls...)...)
	defer deleteJob(ctx, e, job)
	cidr := nodeBlocks(t, ctx, e, node)
	ok, seen := 0, map[string]bool{}
	var rewritten []string
	for _, l := range strings.Split(logs, "\n") {
		// netcheck get: "OK <url> -> <podIP> on <node> (seen from <addr:port>)".
		f := strings.Fields(l)
		if len(f) < 8 || f[0] != "OK" {
			continue
		}
		ok++
		host, _, err := net.SplitHostPort(strings.TrimSuffix(f[len(f)-1], ")"))
		ip, perr := netip.ParseAddr(host)
		if err != nil || perr != nil || !want.Contains(ip) || !cidr.Contains(ip) {
			rewritten = append(rewritten, f[1]+" saw "+host)
		}
		seen[host] = true
	}
	if len(rewritten) > 0 {
		t.Errorf("job %s on %s: requests not seen from a pod address of %s in %s: %s\n%s", job, node, want, cidr, strings.Join(rewritten, ", "), logs)
	}
	if ok != len(urls) {
		t.Errorf("job %s on %s: %d of %d OK:\n%s", job, node, ok, len(urls), logs)
	}
	if len(seen) > 1 {
		t.Errorf("job %s on %s: requests seen from %d addresses, want one (the pod's): %v", job, node, len(seen), seen)
	}
}

// ensureNetcheckService creates the ClusterIP Service in front of netcheck
// if TestClusterIPService has not, and returns its cluster IP.
func ensureNetcheckService(t *testing.T, ctx context.Context, e *clusterEnv) string {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: netcheckName, Namespace: testNS},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": netcheckName},
			Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	got, err := e.Client.CoreV1().Services(testNS).Create(ctx, svc, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		got, err = e.Client.CoreV1().Services(testNS).Get(ctx, netcheckName, metav1.GetOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
	return got.Spec.ClusterIP
}
