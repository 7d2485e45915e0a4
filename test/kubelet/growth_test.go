package kubelet

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/controller"
	"github.com/aliasip/aliasip/node-agent/agent"
)

// growFill is the number of pods TestGrowableNodePool puts on pool-g's
// node: more than its /28 podCIDR holds (13) plus one extra /28 (16), so
// it needs at least two extra blocks.
const growFill = 30

// TestGrowableNodePool: pool-g's node (hack/cluster.sh pool_g_up: a
// growable PodRange of /28 blocks, at most 8 per node, an empty extra
// block drained after 15 s, the default low-water mark of half a block),
// under the chart, on its own kubelet and containerd:
//
//   - it starts with one /28 of pool-g's range, and the kubelet's default
//     maxPods (110) draws no MaxPodsExceedBlock Warning: 13 + 7 x 16
//     addresses can hold them;
//   - 30 pods on it start (the runtime calls aliasip-cni for each): the
//     agent runs short, the controller grants more /28s (BlockGranted),
//     every pod's address is one of the node's blocks, no two pods share
//     one, and every other node routes the extra blocks to it;
//   - a pod of an extra block reaches a pod on pool-a and is reached from
//     it with its own address, reaches a ClusterIP Service with its own
//     address, resolves cluster and outside names through the cluster
//     DNS, and reaches the outside masqueraded as its node;
//   - the pods gone, the extra blocks no pod holds are drained and given
//     back (BlockReturned), and the other nodes' routes to them go.
func TestGrowableNodePool(t *testing.T) {
	e, ctx := setup(t, 12*time.Minute)
	if len(e.PoolG) == 0 {
		t.Fatal("the cluster has no pool-g node")
	}
	node := e.PoolG[0]
	gRange := netip.MustParsePrefix(poolGCIDR)
	first := nodePodCIDR(t, ctx, e, node)
	if !gRange.Contains(first.Addr()) || first.Bits() != poolGMask {
		t.Fatalf("%s: podCIDR %s, want a /%d of %s", node, first, poolGMask, gRange)
	}
	// The kubelet's maxPods (the Node's pods capacity) fits what the
	// node's blocks can grow to: the agent warns about nothing.
	n, err := e.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if maxPods := n.Status.Capacity.Pods().Value(); maxPods > int64(13+(poolGMaxBlocks-1)*16) {
		t.Fatalf("%s: maxPods %d, more than %d blocks can hold", node, maxPods, poolGMaxBlocks)
	}
	if evs := nodeEvents(t, ctx, e, node, agent.EventMaxPodsExceedBlock); len(evs) > 0 {
		t.Errorf("%s: %s: %s", node, agent.EventMaxPodsExceedBlock, evs[0].Message)
	}
	nbs := e.Ranges.AliasipV1alpha1().NodeBlocks()
	eventually(t, ctx, time.Minute, "the NodeBlocks of "+node, func() (bool, error) {
		nb, err := nbs.Get(ctx, node, metav1.GetOptions{})
		return err == nil && nb.Status.PodRange == poolGRange &&
			slices.ContainsFunc(nb.OwnerReferences, func(r metav1.OwnerReference) bool { return r.Kind == "Node" && r.UID == n.UID }), nil
	})

	// Probes first (one per node, pool-g's in its podCIDR while it is
	// not full), then the fill.
	probes := ensureProbes(t, ctx, e)
	svc := ensureProbeService(t, ctx, e)
	fillNode(t, ctx, e, node, growFill)

	// Every pod of the node in one of its blocks, none shared; at least
	// two extra blocks, each a /28 of the range apart from the podCIDR.
	nb, err := nbs.Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var extra []netip.Prefix
	for _, b := range nb.Status.Blocks {
		p := netip.MustParsePrefix(b.CIDR)
		if !gRange.Contains(p.Addr()) || p.Bits() != poolGMask || p.Overlaps(first) {
			t.Errorf("%s: extra block %s, want a /%d of %s apart from %s", node, p, poolGMask, gRange, first)
		}
		extra = append(extra, p)
	}
	if len(extra) < 2 {
		t.Fatalf("%s: %d pods and extra blocks %v; want at least two (status %+v, report %+v)", node, growFill, extra, nb.Status, nb.Spec)
	}
	t.Logf("%s: podCIDR %s, extra blocks %v (%d active, %d draining)", node, first, extra, nb.Status.ActiveBlocks, nb.Status.DrainingBlocks)
	pods, err := podNetworkPodsOn(ctx, e, node)
	if err != nil {
		t.Fatal(err)
	}
	blocks := append(blockSet{first}, extra...)
	seen := map[string]string{}
	var inExtra *corev1.Pod
	for i, p := range pods {
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil || !blocks.Contains(ip) {
			t.Errorf("pod %s on %s has %q, outside the node's blocks %s", p.Name, node, p.Status.PodIP, blocks)
			continue
		}
		if other, dup := seen[ip.String()]; dup {
			t.Errorf("pods %s and %s share %s", other, p.Name, ip)
		}
		seen[ip.String()] = p.Name
		if !first.Contains(ip) && p.Namespace == testNS && p.Labels["app"] == "grow-fill" && inExtra == nil {
			inExtra = &pods[i]
		}
	}
	if inExtra == nil {
		t.Fatalf("no fill pod on %s has an address of an extra block %v", node, extra)
	}
	if evs := nodeEvents(t, ctx, e, node, controller.EventBlockGranted); len(evs) == 0 {
		t.Errorf("%s: no %s Event", node, controller.EventBlockGranted)
	}
	for _, other := range e.Nodes {
		if other == node {
			continue
		}
		for _, x := range extra {
			eventually(t, ctx, 30*time.Second, other+" routes "+x.String()+" to "+node, func() (bool, error) {
				return hasRouteTo(t, other, x), nil
			})
		}
	}

	// A pod of an extra block reaches what a pod of the podCIDR does.
	pod, podIP := inExtra.Name, inExtra.Status.PodIP
	onA := probes[e.Nodes[0]]
	if peer, err := peerOf(e, pod, fmt.Sprintf("http://%s:8080/", onA.Status.PodIP)); err != nil || peer != podIP {
		t.Errorf("%s (%s) -> pool-a pod %s seen as %q (%v); want its own address", pod, podIP, onA.Name, peer, err)
	}
	if peer, err := peerOf(e, onA.Name, fmt.Sprintf("http://%s:8080/", podIP)); err != nil || peer != onA.Status.PodIP {
		t.Errorf("pool-a pod %s -> %s (%s) seen as %q (%v); want %s", onA.Name, pod, podIP, peer, err, onA.Status.PodIP)
	}
	eventually(t, ctx, 30*time.Second, pod+" -> Service "+svc, func() (bool, error) {
		peer, err := peerOf(e, pod, fmt.Sprintf("http://%s/", svc))
		if err != nil {
			return false, nil
		}
		if peer != podIP {
			return false, fmt.Errorf("%s -> Service %s seen as %q; want its own %s", pod, svc, peer, podIP)
		}
		return true, nil
	})
	want := nodeInternalIP(t, ctx, e, node)
	eventually(t, ctx, 30*time.Second, pod+" reaches the outside as its node", func() (bool, error) {
		peer, err := peerOf(e, pod, outsideURL)
		if err != nil {
			return false, nil
		}
		if peer != want {
			return false, fmt.Errorf("the outside saw %s (%s) as %s; want the node's %s", pod, podIP, peer, want)
		}
		return true, nil
	})
	waitForCoreDNS(t, ctx, e)
	out, err := execNetcheck(e, pod, "lookup", "kubernetes.default.svc.cluster.local", outsideName)
	got := lookupResults(out)
	if err != nil || !slices.Equal(got["kubernetes.default.svc.cluster.local"], []string{kubernetesSvc}) || !slices.Equal(got[outsideName], []string{outsideAddr}) {
		t.Errorf("%s: lookups through the cluster DNS: %v (%v)\n%s", pod, got, err, out)
	}

	// The fill goes: the extra blocks no remaining pod holds are drained
	// (after returnAfterSeconds), their addresses cool down (the chart's
	// ipCooldown) and they are given back.
	zero := int64(0)
	if err := e.Client.AppsV1().Deployments(testNS).Delete(ctx, "grow-fill", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, 2*time.Minute, "the grow-fill pods gone", func() (bool, error) {
		l, err := e.Client.CoreV1().Pods(testNS).List(ctx, metav1.ListOptions{LabelSelector: "app=grow-fill"})
		return err == nil && len(l.Items) == 0, nil
	})
	var held []netip.Prefix
	var last string
	eventually(t, ctx, 4*time.Minute, "the emptied extra blocks of "+node+" given back", func() (bool, error) {
		pods, err := podNetworkPodsOn(ctx, e, node)
		if err != nil {
			return false, nil
		}
		nb, err := nbs.Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		held = held[:0]
		for _, b := range nb.Status.Blocks {
			p := netip.MustParsePrefix(b.CIDR)
			if !slices.ContainsFunc(pods, func(pod corev1.Pod) bool {
				ip, err := netip.ParseAddr(pod.Status.PodIP)
				return err == nil && p.Contains(ip)
			}) {
				last = fmt.Sprintf("%s is held by no pod but still granted (%s); report %+v", p, b.State, nb.Spec)
				return false, nil
			}
			held = append(held, p)
		}
		return true, nil
	})
	t.Logf("%s after the fill: extra blocks %v still hold pods (%s)", node, held, last)
	var returned []netip.Prefix
	for _, x := range extra {
		if !slices.Contains(held, x) {
			returned = append(returned, x)
		}
	}
	if len(returned) == 0 {
		t.Fatalf("none of %v given back after the fill left (still %v)", extra, held)
	}
	if evs := nodeEvents(t, ctx, e, node, controller.EventBlockReturned); len(evs) == 0 {
		t.Errorf("%s: no %s Event", node, controller.EventBlockReturned)
	}
	for _, other := range e.Nodes {
		if other == node {
			continue
		}
		for _, x := range returned {
			eventually(t, ctx, 30*time.Second, other+" no longer routes "+x.String(), func() (bool, error) {
				return !hasRouteTo(t, other, x), nil
			})
		}
	}
}

// fillNode runs n netcheck pods on node (a Deployment, grow-fill, gone
// with the test) and waits until all are ready.
func fillNode(t *testing.T, ctx context.Context, e *clusterEnv, node string, n int32) {
	t.Helper()
	ensureNamespace(t, ctx, e)
	grace := int64(1)
	labels := map[string]string{"app": "grow-fill"}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "grow-fill", Namespace: testNS},
		Spec: appsv1.DeploymentSpec{
			Replicas: &n,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeSelector:                  map[string]string{"kubernetes.io/hostname": node},
					Containers:                    []corev1.Container{netcheckContainer(t, "serve")},
					TerminationGracePeriodSeconds: &grace,
				},
			},
		},
	}
	if _, err := e.Client.AppsV1().Deployments(testNS).Create(ctx, d, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		zero := int64(0)
		e.Client.AppsV1().Deployments(testNS).Delete(context.Background(), "grow-fill", metav1.DeleteOptions{GracePeriodSeconds: &zero})
	})
	eventually(t, ctx, 4*time.Minute, fmt.Sprintf("%d grow-fill pods ready on %s", n, node), func() (bool, error) {
		return len(readyPods(ctx, e, "app=grow-fill")) == int(n), nil
	})
}

// nodeEvents lists the Events of a reason about a node.
func nodeEvents(t *testing.T, ctx context.Context, e *clusterEnv, node, reason string) []corev1.Event {
	t.Helper()
	evs, err := e.Client.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + node + ",reason=" + reason})
	if err != nil {
		t.Fatal(err)
	}
	return evs.Items
}
