package controller

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/aliasip/aliasip/cloud"
	aliasipv1 "github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/fake"
)

func podRange(name, cidr string, mask int32, selector map[string]string) *aliasipv1.PodRange {
	return &aliasipv1.PodRange{
		ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.Now()},
		Spec: aliasipv1.PodRangeSpec{CIDR: cidr, MaskSize: &mask,
			NodeSelector: metav1.LabelSelector{MatchLabels: selector}},
	}
}

func labelledNode(name string, l map[string]string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}
}

// A node's labels decide which PodRange it gets a block from: a change of
// labels alone (same spec) queues the node, so a node waiting for a block
// is synced again at once, not at the next resync.
func TestLabelChangeQueuesNode(t *testing.T) {
	n1 := labelledNode("n1", nil)
	n1.ResourceVersion = "1"
	h := newRangeHarness(t, "10.0.0.0/16", []*corev1.Node{n1})
	h.drain()
	n, err := h.client.CoreV1().Nodes().Get(h.ctx, "n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The fake clientset keeps resourceVersions as given: a new one, as
	// the API server would write, so the update is not taken for a resync.
	n.Labels, n.ResourceVersion = map[string]string{"pool": "b"}, "2"
	h.updateNode(n)
	if q := h.drain(); !slices.Contains(q, "n1") {
		t.Fatalf("a label change did not queue the node (queued: %v)", q)
	}
}

// A PodRange's selector change wakes the nodes waiting for a block: one
// whose only range is exhausted and that the other range now selects, and
// one an unusable (overlapping) range held back and no longer selects.
func TestSelectorChangeWakesWaitingNodes(t *testing.T) {
	h := newRangeHarness(t, "10.0.0.0/16",
		[]*corev1.Node{
			labelledNode("a1", map[string]string{"pool": "a"}),
			labelledNode("a2", map[string]string{"pool": "a"}),
			labelledNode("c1", map[string]string{"pool": "c"}),
		},
		podRange("a", "10.1.0.0/28", 28, map[string]string{"pool": "a"}), // one block
		podRange("b", "10.2.0.0/28", 28, map[string]string{"pool": "b"}),
		podRange("c", "10.0.4.0/24", 28, map[string]string{"pool": "c"}), // inside default
	)
	for _, r := range []string{"a", "b", "c"} {
		if err := h.ctrl.syncRange(h.ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.syncNode("a1"); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a2", "c1"} {
		if err := h.syncNode(n); !errors.Is(err, errExhausted) {
			t.Fatalf("%s: %v, want it waiting", n, err)
		}
	}
	h.drain()
	for name, sel := range map[string]*metav1.LabelSelector{
		"b": {MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "pool", Operator: metav1.LabelSelectorOpIn, Values: []string{"a", "b"}}}},
		"c": {MatchLabels: map[string]string{"pool": "nobody"}},
	} {
		pr, err := h.prs.AliasipV1alpha1().PodRanges().Get(h.ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pr.Spec.NodeSelector = *sel
		h.updateRange(pr)
		if err := h.ctrl.syncRange(h.ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	queued := h.drain()
	for _, n := range []string{"a2", "c1"} {
		if !slices.Contains(queued, n) {
			t.Errorf("%s waits on after the selectors changed (queued: %v)", n, queued)
		}
	}
	for n, want := range map[string]string{"a2": "b", "c1": "default"} {
		if err := h.syncNode(n); err != nil {
			t.Fatal(err)
		}
		nd, err := h.client.CoreV1().Nodes().Get(h.ctx, n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := nd.Labels[aliasipv1.NodeLabel]; got != want || nd.Spec.PodCIDR == "" {
			t.Errorf("%s: %q from %q, want a block of %s", n, nd.Spec.PodCIDR, got, want)
		}
	}
}

// A PodRange the range worker has not made a pool of yet (just created;
// on GCE, its subnetwork read failing) holds back the nodes it selects:
// they wait for it instead of taking — and keeping — a default block,
// and get a block of it once it is a pool.
func TestPendingPodRangeHoldsBackItsNodes(t *testing.T) {
	h := newRangeHarness(t, "10.0.0.0/16", []*corev1.Node{labelledNode("p1", map[string]string{"pool": "p"})})
	h.createRange(podRange("late", "10.3.0.0/24", 28, map[string]string{"pool": "p"}))
	// The informer's handler queued the range for the range worker
	// (which is not running).
	if h.ctrl.ranges.queue.Len() == 0 {
		t.Fatal("the new PodRange was not queued")
	}
	if err := h.syncNode("p1"); !errors.Is(err, errExhausted) {
		t.Fatalf("p1, selected only by a PodRange not synced yet: %v (podCIDR %q), want it waiting", err, h.podCIDR("p1"))
	}
	if err := h.ctrl.syncRange(h.ctx, "late"); err != nil {
		t.Fatal(err)
	}
	if err := h.syncNode("p1"); err != nil {
		t.Fatal(err)
	}
	if got := h.podCIDR("p1"); !netip.MustParsePrefix("10.3.0.0/24").Contains(netip.MustParsePrefix(got).Addr()) {
		t.Errorf("p1 got %q, want a block of late (10.3.0.0/24)", got)
	}
}

// The rebuild keeps in use the range nodes hold blocks of. At run time a
// range created while an older overlapping one was unusable (it overlapped
// a third, since deleted) is used, and the older one is then refused; a
// restart that took the older one first by creation time made it a pool
// over the newer one's nodes: their aliases (of the newer range) no longer
// theirs, the newer range's finalizer free to go while they held its blocks.
func TestRebuildKeepsTheRangeInUse(t *testing.T) {
	wide := podRange("a-wide", "10.4.0.0/15", 28, map[string]string{"pool": "a"})
	wide.CreationTimestamp = metav1.NewTime(time.Now().Add(-time.Hour))
	fix := podRange("b-fix", "10.4.0.0/16", 28, map[string]string{"pool": "b"})
	n := labelledNode("n", map[string]string{"pool": "b", aliasipv1.NodeLabel: "b-fix"})
	n.Spec.PodCIDR, n.Spec.PodCIDRs = "10.4.1.0/28", []string{"10.4.1.0/28"}
	h := newRangeHarnessCloud(t, "10.0.0.0/16", func(fc *fake.Cloud) {
		if err := fc.RegisterInstance("n"); err != nil {
			t.Fatal(err)
		}
		if err := fc.AddAlias(context.Background(), cloud.InstanceRef{Name: "n"},
			cloud.AliasRange{CIDR: netip.MustParsePrefix("10.4.1.0/28"), RangeName: "podrange-b-fix"}); err != nil {
			t.Fatal(err)
		}
	}, []*corev1.Node{n}, wide, fix)
	if _, ok := h.ctrl.blocks.pool("b-fix"); !ok {
		t.Fatal("b-fix, whose block node n holds, is not a pool after the rebuild")
	}
	if _, ok := h.ctrl.blocks.pool("a-wide"); ok {
		t.Fatal("a-wide, overlapping b-fix, which is in use, is a pool after the rebuild")
	}
	writes := len(adds(h.cloud))
	h.client.ClearActions()
	if err := h.syncNode("n"); err != nil {
		t.Fatal(err)
	}
	for _, a := range h.client.Actions() {
		if a.GetVerb() == "patch" || a.GetVerb() == "update" {
			t.Errorf("node n written: %v", a)
		}
	}
	if got := len(adds(h.cloud)); got != writes {
		t.Errorf("%d alias writes for n, which was in sync", got-writes)
	}
	if ev := h.events(); ev != "" {
		t.Errorf("events for an in-sync node: %s", ev)
	}
	// The overlapping older range is held back: a node it selects waits.
	if err := h.ctrl.syncRange(h.ctx, "a-wide"); err != nil {
		t.Fatal(err)
	}
	pr, err := h.prs.AliasipV1alpha1().PodRanges().Get(h.ctx, "a-wide", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c := meta.FindStatusCondition(pr.Status.Conditions, aliasipv1.ConditionReady); c == nil || c.Reason != aliasipv1.ReasonOverlaps {
		t.Errorf("a-wide Ready condition %+v, want Overlaps", c)
	}
}

// Which of two overlapping ranges stays in use across a rebuild is read
// from the cloud, not from Node fields a kubelet writes: a Node a kubelet
// registered with the older range's label and a block of it as podCIDR
// (NodeRestriction lets it set both on its own Node) does not make the
// older range a pool over the newer one's nodes.
func TestRebuildRangeInUseNotDecidedByAKubelet(t *testing.T) {
	wide := podRange("a-wide", "10.4.0.0/15", 28, map[string]string{"pool": "a"})
	wide.CreationTimestamp = metav1.NewTime(time.Now().Add(-time.Hour))
	fix := podRange("b-fix", "10.4.0.0/16", 28, map[string]string{"pool": "b"})
	n := labelledNode("n", map[string]string{"pool": "b", aliasipv1.NodeLabel: "b-fix"})
	n.Spec.PodCIDR, n.Spec.PodCIDRs = "10.4.1.0/28", []string{"10.4.1.0/28"}
	evil := labelledNode("evil", map[string]string{"pool": "a", aliasipv1.NodeLabel: "a-wide"})
	evil.CreationTimestamp = metav1.NewTime(time.Now().Add(-2 * time.Hour))
	evil.Spec.PodCIDR, evil.Spec.PodCIDRs = "10.5.0.0/28", []string{"10.5.0.0/28"}
	h := newRangeHarnessCloud(t, "10.0.0.0/16", func(fc *fake.Cloud) {
		if err := fc.RegisterInstance("n"); err != nil {
			t.Fatal(err)
		}
		if err := fc.AddAlias(context.Background(), cloud.InstanceRef{Name: "n"},
			cloud.AliasRange{CIDR: netip.MustParsePrefix("10.4.1.0/28"), RangeName: "podrange-b-fix"}); err != nil {
			t.Fatal(err)
		}
	}, []*corev1.Node{evil, n}, wide, fix)
	if _, ok := h.ctrl.blocks.pool("b-fix"); !ok {
		t.Error("b-fix, whose alias node n's NIC carries, is not a pool after the rebuild")
	}
	if _, ok := h.ctrl.blocks.pool("a-wide"); ok {
		t.Error("a-wide became a pool over b-fix's nodes because a kubelet labelled its own Node with it")
	}
}
