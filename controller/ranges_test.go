package controller

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/aliasip/aliasip/cloud"
	aliasipv1 "github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	rangefake "github.com/aliasip/aliasip/controller/generated/clientset/versioned/fake"
	"github.com/aliasip/aliasip/fake"
)

// rangeHarness is a harness whose controller uses PodRanges (a fake
// clientset for them); the PodRange informer is synced before the rebuild,
// as Run does.
type rangeHarness struct {
	*harness
	prs *rangefake.Clientset
}

func newRangeHarness(t *testing.T, cluster string, nodes []*corev1.Node, ranges ...*aliasipv1.PodRange) *rangeHarness {
	t.Helper()
	return newRangeHarnessCloud(t, cluster, nil, nodes, ranges...)
}

// newRangeHarnessCloud is newRangeHarness with prep run on the fake cloud
// before the rebuild.
func newRangeHarnessCloud(t *testing.T, cluster string, prep func(*fake.Cloud), nodes []*corev1.Node, ranges ...*aliasipv1.PodRange) *rangeHarness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var objs []runtime.Object
	for _, n := range nodes {
		objs = append(objs, n)
	}
	client := k8sfake.NewClientset(objs...)
	fc, err := fake.New(fake.Options{PodRange: netip.MustParsePrefix(cluster), AutoRegister: true})
	if err != nil {
		t.Fatal(err)
	}
	if prep != nil {
		prep(fc)
	}
	h := &harness{t: t, ctx: ctx, client: client, cloud: fc, recorder: record.NewFakeRecorder(1000)}
	factory := informers.NewSharedInformerFactory(client, 0)
	h.metrics = NewMetrics(prometheus.NewRegistry())
	h.ctrl = New(Config{MaskSize: 24, Workers: 1, CloudQPS: 1000, CloudBurst: 1000}, client, factory.Core().V1().Nodes(), h.cloud, h.recorder, h.metrics)
	h.informer = factory.Core().V1().Nodes().Informer()
	var robjs []runtime.Object
	for _, pr := range ranges {
		robjs = append(robjs, pr)
	}
	prs := rangefake.NewSimpleClientset(robjs...)
	h.ctrl.UsePodRanges(prs, client.Discovery(), 0)
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	h.ctrl.ranges.run(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), h.ctrl.ranges.informer.HasSynced) {
		t.Fatal("PodRange informer never synced")
	}
	if err := h.ctrl.rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	return &rangeHarness{harness: h, prs: prs}
}

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

// drain empties the node queue and returns what it held.
func (h *harness) drain() []string {
	var out []string
	for h.ctrl.queue.Len() > 0 {
		k, _ := h.ctrl.queue.Get()
		h.ctrl.queue.Done(k)
		h.ctrl.queue.Forget(k)
		out = append(out, k)
	}
	return out
}

// waitQueued waits until the node queue holds node (the informer's
// handlers run after its cache is updated, so this polls).
func (h *harness) waitQueued(node string) bool {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var seen []string
	for time.Now().Before(deadline) {
		seen = append(seen, h.drain()...)
		if slices.Contains(seen, node) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
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
	if _, err := h.client.CoreV1().Nodes().Update(h.ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if !h.waitQueued("n1") {
		t.Fatal("a label change did not queue the node")
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
	if err := h.syncSeen("a1", ""); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a2", "c1"} {
		if err := h.syncSeen(n, ""); !errors.Is(err, errExhausted) {
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
		if _, err := h.prs.AliasipV1alpha1().PodRanges().Update(h.ctx, pr, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := wait5s(func() bool {
			got, err := h.ctrl.ranges.lister.Get(name)
			return err == nil && got.Spec.NodeSelector.String() == sel.String()
		}); err != nil {
			t.Fatalf("informer never showed %s's new selector", name)
		}
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
		if err := h.syncSeen(n, ""); err != nil {
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

func wait5s(cond func() bool) error {
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// A PodRange the range worker has not made a pool of yet (just created;
// on GCE, its subnetwork read failing) holds back the nodes it selects:
// they wait for it instead of taking — and keeping — a default block,
// and get a block of it once it is a pool.
func TestPendingPodRangeHoldsBackItsNodes(t *testing.T) {
	h := newRangeHarness(t, "10.0.0.0/16", []*corev1.Node{labelledNode("p1", map[string]string{"pool": "p"})})
	if _, err := h.prs.AliasipV1alpha1().PodRanges().Create(h.ctx,
		podRange("late", "10.3.0.0/24", 28, map[string]string{"pool": "p"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := wait5s(func() bool { _, err := h.ctrl.ranges.lister.Get("late"); return err == nil }); err != nil {
		t.Fatal("informer never showed the PodRange")
	}
	// The informer's handler runs after its cache is updated: wait until
	// it queued the range for the range worker (which is not running).
	if err := wait5s(func() bool { return h.ctrl.ranges.queue.Len() > 0 }); err != nil {
		t.Fatal("the new PodRange was never queued")
	}
	if err := h.syncSeen("p1", ""); !errors.Is(err, errExhausted) {
		t.Fatalf("p1, selected only by a PodRange not synced yet: %v (podCIDR %q), want it waiting", err, h.podCIDR("p1"))
	}
	if err := h.ctrl.syncRange(h.ctx, "late"); err != nil {
		t.Fatal(err)
	}
	if err := h.syncSeen("p1", ""); err != nil {
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
	if err := h.syncSeen("n", "10.4.1.0/28"); err != nil {
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
