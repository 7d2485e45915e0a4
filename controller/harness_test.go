package controller

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/aliasip/aliasip/cloud"
	aliasipv1 "github.com/aliasip/aliasip/controller/apis/aliasip/v1alpha1"
	rangefake "github.com/aliasip/aliasip/controller/generated/clientset/versioned/fake"
	aliasiplisters "github.com/aliasip/aliasip/controller/generated/listers/aliasip/v1alpha1"
	"github.com/aliasip/aliasip/fake"
)

// testInformer stands in for a running informer (sample-controller's
// controller_test.go shape): it is never started; the test seeds its
// indexer and, after each client write, sets the indexer to what the
// client holds and tells the registered event handlers, synchronously. A
// sync then reads exactly what the test wrote: no informer goroutine,
// nothing to wait for.
type testInformer struct {
	cache.SharedIndexInformer
	handlers []cache.ResourceEventHandler
}

func newTestInformer(obj runtime.Object) *testInformer {
	return &testInformer{SharedIndexInformer: cache.NewSharedIndexInformer(&cache.ListWatch{}, obj, 0, cache.Indexers{})}
}

// AddEventHandler records the handler; set calls it.
func (i *testInformer) AddEventHandler(h cache.ResourceEventHandler) (cache.ResourceEventHandlerRegistration, error) {
	i.handlers = append(i.handlers, h)
	return nil, nil
}

// HasSynced is true: the indexer holds what the test seeded.
func (i *testInformer) HasSynced() bool { return true }

// set makes the indexer's object under key obj (nil: none) and notifies
// the handlers of the change, as a watch event would; no change, no event.
func (i *testInformer) set(key string, obj runtime.Object) {
	idx := i.GetIndexer()
	old, had, err := idx.GetByKey(key)
	if err != nil {
		panic(err)
	}
	switch {
	case obj != nil && had:
		if equality.Semantic.DeepEqual(old, obj) {
			return
		}
		_ = idx.Update(obj)
		for _, h := range i.handlers {
			h.OnUpdate(old, obj)
		}
	case obj != nil:
		_ = idx.Add(obj)
		for _, h := range i.handlers {
			h.OnAdd(obj, false)
		}
	case had:
		_ = idx.Delete(old)
		for _, h := range i.handlers {
			h.OnDelete(old)
		}
	}
}

// mirror sets the indexer to objs (the client's list), deleting what the
// client no longer holds.
func (i *testInformer) mirror(objs map[string]runtime.Object) {
	for _, key := range i.GetIndexer().ListKeys() {
		if _, ok := objs[key]; !ok {
			i.set(key, nil)
		}
	}
	for key, obj := range objs {
		i.set(key, obj)
	}
}

type nodeInformer struct{ *testInformer }

func (n nodeInformer) Informer() cache.SharedIndexInformer { return n.testInformer }
func (n nodeInformer) Lister() corelisters.NodeLister {
	return corelisters.NewNodeLister(n.GetIndexer())
}

type podRangeInformer struct{ *testInformer }

func (r podRangeInformer) Informer() cache.SharedIndexInformer { return r.testInformer }
func (r podRangeInformer) Lister() aliasiplisters.PodRangeLister {
	return aliasiplisters.NewPodRangeLister(r.GetIndexer())
}

type nodeBlocksInformer struct{ *testInformer }

func (r nodeBlocksInformer) Informer() cache.SharedIndexInformer { return r.testInformer }
func (r nodeBlocksInformer) Lister() aliasiplisters.NodeBlocksLister {
	return aliasiplisters.NewNodeBlocksLister(r.GetIndexer())
}

// harness is a controller on a fake clientset and the fake cloud, its
// informers seeded by the test (testInformer), its state rebuilt; nothing
// runs in the background.
type harness struct {
	t        *testing.T
	ctx      context.Context
	client   *k8sfake.Clientset
	cloud    *fake.Cloud
	ctrl     *Controller
	recorder *record.FakeRecorder
	metrics  *Metrics
	reg      *prometheus.Registry // where metrics are registered
	nodeInf  *testInformer
	prs      *rangefake.Clientset // nil without PodRanges
	rangeInf *testInformer        // nil without PodRanges
	nbInf    *testInformer        // NodeBlocks; nil without PodRanges
}

// harnessConfig says what a harness starts with.
type harnessConfig struct {
	cluster   string
	nodes     []*corev1.Node
	podRanges bool // the controller uses PodRanges (these, if any)
	ranges    []*aliasipv1.PodRange
	// prep runs on the fake cloud before the rebuild.
	prep func(*fake.Cloud)
	// cloudOf is the cloud the controller uses (default: the fake).
	cloudOf func(*fake.Cloud) cloud.Interface
	// dualStack: the cluster is dual-stack, the fake's instances get /96s
	// of fd20:0:0:1::/64.
	dualStack bool
	// nodeBlocks seed the NodeBlocks (with podRanges).
	nodeBlocks []*aliasipv1.NodeBlocks
}

func startHarness(t *testing.T, hc harnessConfig) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var objs []runtime.Object
	for _, n := range hc.nodes {
		objs = append(objs, n.DeepCopy())
	}
	fo := fake.Options{PodRange: netip.MustParsePrefix(hc.cluster), AutoRegister: true}
	if hc.dualStack {
		fo.IPv6Range = netip.MustParsePrefix("fd20:0:0:1::/64")
	}
	fc, err := fake.New(fo)
	if err != nil {
		t.Fatal(err)
	}
	if hc.prep != nil {
		hc.prep(fc)
	}
	var cl cloud.Interface = fc
	if hc.cloudOf != nil {
		cl = hc.cloudOf(fc)
	}
	reg := prometheus.NewRegistry()
	h := &harness{t: t, ctx: ctx, client: k8sfake.NewClientset(objs...), cloud: fc, recorder: record.NewFakeRecorder(1000),
		metrics: NewMetrics(reg), reg: reg, nodeInf: newTestInformer(&corev1.Node{})}
	for _, n := range hc.nodes {
		_ = h.nodeInf.GetIndexer().Add(n.DeepCopy())
	}
	h.ctrl = New(Config{MaskSize: 24, Workers: 1, CloudQPS: 1000, CloudBurst: 1000, DualStack: hc.dualStack}, h.client, nodeInformer{h.nodeInf}, cl, h.recorder, h.metrics)
	if hc.podRanges {
		var robjs []runtime.Object
		h.rangeInf = newTestInformer(&aliasipv1.PodRange{})
		for _, pr := range hc.ranges {
			robjs = append(robjs, pr.DeepCopy())
			_ = h.rangeInf.GetIndexer().Add(pr.DeepCopy())
		}
		h.nbInf = newTestInformer(&aliasipv1.NodeBlocks{})
		h.prs = rangefake.NewSimpleClientset(robjs...)
		// Created through the client, not seeded into it: the fake's
		// tracker would guess the resource "nodeblockses" from the kind.
		for _, nb := range hc.nodeBlocks {
			created, err := h.prs.AliasipV1alpha1().NodeBlocks().Create(ctx, nb.DeepCopy(), metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			_ = h.nbInf.GetIndexer().Add(created)
		}
		h.ctrl.usePodRanges(h.prs, h.client.Discovery(), podRangeInformer{h.rangeInf})
		h.ctrl.useNodeBlocks(h.prs, nodeBlocksInformer{h.nbInf})
	}
	if err := h.ctrl.rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	return h
}

// newHarness is a harness with the default range only and bare nodes.
func newHarness(t *testing.T, cluster string, nodes ...string) *harness {
	t.Helper()
	var ns []*corev1.Node
	for _, n := range nodes {
		ns = append(ns, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}})
	}
	return startHarness(t, harnessConfig{cluster: cluster, nodes: ns})
}

// newRangeHarness is a harness whose controller uses PodRanges.
func newRangeHarness(t *testing.T, cluster string, nodes []*corev1.Node, ranges ...*aliasipv1.PodRange) *harness {
	t.Helper()
	return startHarness(t, harnessConfig{cluster: cluster, nodes: nodes, podRanges: true, ranges: ranges})
}

// newRangeHarnessCloud is newRangeHarness with prep run on the fake cloud
// before the rebuild.
func newRangeHarnessCloud(t *testing.T, cluster string, prep func(*fake.Cloud), nodes []*corev1.Node, ranges ...*aliasipv1.PodRange) *harness {
	t.Helper()
	return startHarness(t, harnessConfig{cluster: cluster, nodes: nodes, podRanges: true, ranges: ranges, prep: prep})
}

// caughtUp shows the controller what the clients hold now, as its
// informers would once their watches delivered every write (the
// controller's own patches included): indexers set, handlers told.
func (h *harness) caughtUp() {
	h.t.Helper()
	nodes, err := h.client.CoreV1().Nodes().List(h.ctx, metav1.ListOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	objs := map[string]runtime.Object{}
	for i := range nodes.Items {
		objs[nodes.Items[i].Name] = &nodes.Items[i]
	}
	h.nodeInf.mirror(objs)
	if h.prs == nil {
		return
	}
	ranges, err := h.prs.AliasipV1alpha1().PodRanges().List(h.ctx, metav1.ListOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	objs = map[string]runtime.Object{}
	for i := range ranges.Items {
		objs[ranges.Items[i].Name] = &ranges.Items[i]
	}
	h.rangeInf.mirror(objs)
	nbs, err := h.prs.AliasipV1alpha1().NodeBlocks().List(h.ctx, metav1.ListOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	objs = map[string]runtime.Object{}
	for i := range nbs.Items {
		objs[nbs.Items[i].Name] = &nbs.Items[i]
	}
	h.nbInf.mirror(objs)
}

// syncNode syncs node once, on what the clients hold now.
func (h *harness) syncNode(node string) error {
	h.t.Helper()
	h.caughtUp()
	return h.ctrl.safeSync(h.ctx, node)
}

// createNode, updateNode and deleteNode write a Node through the client
// and show the controller the result.
func (h *harness) createNode(n *corev1.Node) {
	h.t.Helper()
	if _, err := h.client.CoreV1().Nodes().Create(h.ctx, n, metav1.CreateOptions{}); err != nil {
		h.t.Fatal(err)
	}
	h.caughtUp()
}

func (h *harness) updateNode(n *corev1.Node) {
	h.t.Helper()
	if _, err := h.client.CoreV1().Nodes().Update(h.ctx, n, metav1.UpdateOptions{}); err != nil {
		h.t.Fatal(err)
	}
	h.caughtUp()
}

func (h *harness) deleteNode(name string) {
	h.t.Helper()
	if err := h.client.CoreV1().Nodes().Delete(h.ctx, name, metav1.DeleteOptions{}); err != nil {
		h.t.Fatal(err)
	}
	h.caughtUp()
}

// createRange and updateRange write a PodRange through the client and
// show the controller the result.
func (h *harness) createRange(pr *aliasipv1.PodRange) {
	h.t.Helper()
	if _, err := h.prs.AliasipV1alpha1().PodRanges().Create(h.ctx, pr, metav1.CreateOptions{}); err != nil {
		h.t.Fatal(err)
	}
	h.caughtUp()
}

func (h *harness) updateRange(pr *aliasipv1.PodRange) {
	h.t.Helper()
	if _, err := h.prs.AliasipV1alpha1().PodRanges().Update(h.ctx, pr, metav1.UpdateOptions{}); err != nil {
		h.t.Fatal(err)
	}
	h.caughtUp()
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

func (h *harness) podCIDR(node string) string {
	h.t.Helper()
	n, err := h.client.CoreV1().Nodes().Get(h.ctx, node, metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	return n.Spec.PodCIDR
}

func (h *harness) events() string {
	var out []string
	for {
		select {
		case e := <-h.recorder.Events:
			out = append(out, e)
		default:
			return strings.Join(out, "\n")
		}
	}
}

// adds returns the blocks AddAlias was asked for, in order.
func adds(fc *fake.Cloud) []netip.Prefix {
	var out []netip.Prefix
	for _, c := range fc.Log() {
		if c.Method == "AddAlias" {
			out = append(out, c.CIDR)
		}
	}
	return out
}
