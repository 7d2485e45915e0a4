package agent

import (
	"context"
	"net/netip"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// podRangeGVR is the PodRange resource, read as unstructured objects so
// the agent does not import the controller's API packages.
var podRangeGVR = schema.GroupVersionResource{Group: "aliasip.io", Version: "v1alpha1", Resource: "podranges"}

// SetDynamicClient gives the agent a dynamic client to follow PodRanges
// with: their CIDRs join the non-masquerade set, and with --fabric=routes
// they bound which other nodes' blocks are routed. Without one, only the
// default range (--cluster-cidr) is known.
func (a *Agent) SetDynamicClient(d dynamic.Interface) { a.dyn = d }

// podRange is a range the controller hands blocks out of, as its status
// says: its CIDR and its block size (0 when the status gives none, as
// for a range being removed).
type podRange struct {
	cidr     netip.Prefix
	maskSize int
	// maxBlocks is the blocks a node of a growable range may hold
	// (spec.growth.maxBlocksPerNode, the CRD's default 8 when unset); 0
	// for a fixed-size range.
	maxBlocks int
}

// startPodRanges starts the PodRange informer (when the agent has a
// dynamic client and a use for them) and waits (up to 30 s) for it when
// the API serves PodRanges: a first egress write without their CIDRs
// would masquerade new pod-to-pod connections to their blocks (and after
// a restart replace a table that was right), and a first fabric pass
// would drop the routes to their nodes. A cluster without the CRD must
// not keep pods from starting, so then it is not waited for. Each change
// kicks the fabric loop and the egress loop.
func (a *Agent) startPodRanges(ctx context.Context) {
	if a.dyn == nil {
		return // (checkMaxPods needs a growable range's maxBlocksPerNode even with masquerade off and no fabric)
	}
	f := dynamicinformer.NewDynamicSharedInformerFactory(a.dyn, 10*time.Minute)
	inf := f.ForResource(podRangeGVR)
	kick := func() { a.signal(a.fabricCh); a.signal(a.egressCh) }
	inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { kick() }, UpdateFunc: func(any, any) { kick() }, DeleteFunc: func(any) { kick() },
	})
	a.mu.Lock()
	a.ranges = inf.Lister() // read by checkOwnNode's informer handler
	a.mu.Unlock()
	f.Start(ctx.Done())
	if a.podRangesServed() {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if !cache.WaitForCacheSync(wctx.Done(), inf.Informer().HasSynced) {
			klog.FromContext(ctx).Info("The PodRange informer has not synced; starting without their CIDRs")
		}
		cancel()
	}
}

// podRangesServed reports whether the API serves the PodRange resource.
func (a *Agent) podRangesServed() bool {
	l, err := a.client.Discovery().ServerResourcesForGroupVersion(podRangeGVR.GroupVersion().String())
	if err != nil {
		return false
	}
	for _, r := range l.APIResources {
		if r.Name == podRangeGVR.Resource {
			return true
		}
	}
	return false
}

// podRanges returns the PodRanges in use (podRangeInUse), of either
// family; none when they are not followed.
func (a *Agent) podRanges() []podRange {
	a.mu.Lock()
	ranges := a.ranges
	a.mu.Unlock()
	if ranges == nil {
		return nil
	}
	var out []podRange
	objs, _ := ranges.List(labels.Everything())
	for _, o := range objs {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		if r, ok := podRangeInUse(u); ok {
			out = append(out, r)
		}
	}
	return out
}

// podRangeCIDRs returns the CIDRs of podRanges.
func (a *Agent) podRangeCIDRs() []netip.Prefix {
	var out []netip.Prefix
	for _, r := range a.podRanges() {
		out = append(out, r.cidr)
	}
	return out
}

// podRangeInUse returns a PodRange the controller hands blocks out of
// (Ready=True) or whose blocks nodes still hold (a range being removed):
// status.cidr and status.maskSize, which only the controller writes (the
// status subresource). spec.cidr is not taken: the schema lets a PodRange
// creator write 0.0.0.0/1, and a range the controller refused (it
// overlaps another) must neither switch masquerade off for those
// addresses nor let a Node claiming a block in it be routed.
func podRangeInUse(u *unstructured.Unstructured) (podRange, bool) {
	s, _, _ := unstructured.NestedString(u.Object, "status", "cidr")
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return podRange{}, false
	}
	mask, _, _ := unstructured.NestedInt64(u.Object, "status", "maskSize")
	if mask < int64(p.Bits()) || mask > int64(p.Addr().BitLen()) {
		mask = 0 // absent or nonsense: the block size is unknown
	}
	nodes, _, _ := unstructured.NestedInt64(u.Object, "status", "nodes")
	used, _, _ := unstructured.NestedInt64(u.Object, "status", "blocksUsed")
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	ready := false
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == "Ready" && m["status"] == "True" {
			ready = true
		}
	}
	maxBlocks := 0
	if g, ok, _ := unstructured.NestedMap(u.Object, "spec", "growth"); ok {
		maxBlocks = 8 // the CRD's default
		if n, ok := g["maxBlocksPerNode"].(int64); ok && n >= 2 {
			maxBlocks = int(n)
		}
	}
	return podRange{cidr: p.Masked(), maskSize: int(mask), maxBlocks: maxBlocks}, ready || nodes > 0 || used > 0
}
