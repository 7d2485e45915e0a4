package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/aliasip/aliasip/node-agent/datapath"
	"github.com/aliasip/aliasip/node-agent/ipam"
)

// Growable PodRanges: a node's extra blocks are granted by the controller
// in its NodeBlocks status (Active or Draining); the agent serves pods
// from them after its podCIDR, and writes its usage into the NodeBlocks
// spec, which is how the controller learns the node runs short (or has
// an ADD waiting) and when a draining block is empty. The agent reads the
// object as unstructured data: it does not import the controller's API.

// nodeBlocksGVR is the NodeBlocks resource.
var nodeBlocksGVR = schema.GroupVersionResource{Group: "aliasip.io", Version: "v1alpha1", Resource: "nodeblocks"}

// EventBlockDrainFailed: a block the controller no longer grants still
// holds addresses here (it is kept).
const EventBlockDrainFailed = "ExtraBlockInUse"

// growthWait bounds how long an ADD that finds no free address waits for
// a block being added: under the kubelet's CNI call, and long enough for
// the controller's grant (one cloud operation).
var growthWait = 8 * time.Second

// growth is the agent's side of growable ranges.
type growth struct {
	lister cache.GenericLister // NodeBlocks (all with fabric routes, else this node's)
	mu     sync.Mutex
	// grown is closed (and replaced) whenever the store's extra blocks
	// change: ADDs waiting for an address try again.
	grown chan struct{}
	// waiting counts ADDs waiting for an address.
	waiting int
	// reported is the last spec written (nil: none yet).
	reported  map[string]any
	lastWrite time.Time
}

// nodeBlocksServed reports whether the API serves NodeBlocks.
func (a *Agent) nodeBlocksServed() bool {
	l, err := a.client.Discovery().ServerResourcesForGroupVersion(nodeBlocksGVR.GroupVersion().String())
	if err != nil {
		return false
	}
	return slices.ContainsFunc(l.APIResources, func(r metav1.APIResource) bool { return r.Name == nodeBlocksGVR.Resource })
}

// startGrowth starts the NodeBlocks informer (this node's object; every
// node's with fabric routes, to route their extra blocks) when the API
// serves NodeBlocks, and waits for it (up to 30 s).
func (a *Agent) startGrowth(ctx context.Context) {
	if a.dyn == nil || !a.nodeBlocksServed() {
		return
	}
	var f dynamicinformer.DynamicSharedInformerFactory
	if a.cfg.FabricRoutes {
		f = dynamicinformer.NewDynamicSharedInformerFactory(a.dyn, 10*time.Minute)
	} else {
		f = dynamicinformer.NewFilteredDynamicSharedInformerFactory(a.dyn, 10*time.Minute, "", func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", a.cfg.NodeName).String()
		})
	}
	inf := f.ForResource(nodeBlocksGVR)
	kick := func(obj any) {
		a.signal(a.fabricCh)
		if u, ok := obj.(*unstructured.Unstructured); ok && u.GetName() == a.cfg.NodeName {
			a.signal(a.growthCh)
		}
	}
	inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: kick, UpdateFunc: func(_, cur any) { kick(cur) }, DeleteFunc: kick,
	})
	g := &growth{lister: inf.Lister(), grown: make(chan struct{})}
	f.Start(ctx.Done())
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if !cache.WaitForCacheSync(wctx.Done(), inf.Informer().HasSynced) {
		klog.FromContext(ctx).Info("The NodeBlocks informer has not synced; extra blocks are taken up once it does")
	}
	a.mu.Lock()
	a.growth = g
	a.mu.Unlock()
	a.syncGrowth(ctx)
}

// growthLoop keeps the store's extra blocks and the report in step with
// the NodeBlocks object.
func (a *Agent) growthLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.ResyncPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.growthCh:
		}
		a.syncGrowth(ctx)
	}
}

// grantedBlocks reads the blocks a NodeBlocks status grants, each with
// when its drain started ("" when Active).
func grantedBlocks(u *unstructured.Unstructured) ([]ipam.Block, map[netip.Prefix]string) {
	list, _, _ := unstructured.NestedSlice(u.Object, "status", "blocks")
	var out []ipam.Block
	since := map[netip.Prefix]string{}
	for _, x := range list {
		m, ok := x.(map[string]any)
		if !ok {
			continue
		}
		c, _ := m["cidr"].(string)
		p, err := netip.ParsePrefix(c)
		if err != nil {
			continue
		}
		state, _ := m["state"].(string)
		out = append(out, ipam.Block{CIDR: p, Draining: state == "Draining"})
		if s, ok := m["drainingSince"].(string); ok {
			since[p] = s
		}
	}
	return out, since
}

// syncGrowth applies this node's granted blocks to the store, wakes the
// ADDs waiting for one, and writes the report.
func (a *Agent) syncGrowth(ctx context.Context) {
	a.mu.Lock()
	g, store := a.growth, a.store
	a.mu.Unlock()
	if g == nil || store == nil {
		return
	}
	logger := klog.FromContext(ctx)
	obj, err := g.lister.Get(a.cfg.NodeName)
	if err != nil {
		return // not a node of a growable range (or not created yet)
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	want, since := grantedBlocks(u)
	// Blocks are taken up as granted; one the controller stopped granting
	// that still holds addresses (it never does: it waits for the drained
	// report) is kept, and reported.
	before := store.ExtraBlocks()
	// A new block is masqueraded before it serves a pod (egress.go
	// podBlocks): the egress table is written first, here, not by its
	// loop later.
	a.masqueradeFirst(ctx, before, want)
	if err := store.SetExtraBlocks(want); errors.Is(err, ipam.ErrBlockInUse) {
		keep := slices.Clone(want)
		for _, b := range before {
			if !slices.ContainsFunc(want, func(w ipam.Block) bool { return w.CIDR == b.CIDR }) {
				keep = append(keep, ipam.Block{CIDR: b.CIDR, Draining: true})
			}
		}
		a.event(corev1.EventTypeWarning, EventBlockDrainFailed, "A block the NodeBlocks no longer grants still holds addresses here; kept, draining: %v", err)
		if err := store.SetExtraBlocks(keep); err != nil {
			logger.Error(err, "Extra blocks")
		}
	} else if err != nil {
		logger.Error(err, "Extra blocks from NodeBlocks", "blocks", want)
	}
	if after := store.ExtraBlocks(); !slices.Equal(before, after) {
		logger.Info("Extra blocks", "blocks", after)
		g.mu.Lock()
		close(g.grown)
		g.grown = make(chan struct{})
		g.mu.Unlock()
		// On GCE the guest agent adds a local route for each alias range;
		// an extra block's must go too (as the podCIDR's: see
		// removeGuestRoute).
		a.removeGuestRoute(ctx)
		// A block gone leaves the masquerade set.
		a.signal(a.egressCh)
	}
	a.mu.Lock()
	a.pendingExtra = nil
	a.mu.Unlock()
	a.writeReport(ctx, u, store, since)
}

// masqueradeFirst writes the egress table with the blocks of want that
// the store does not hold yet, when masquerade is on: a pod given an
// address of a new block then leaves masqueraded from its first packet.
// A failed write is reported and retried by the egress loop (as any).
func (a *Agent) masqueradeFirst(ctx context.Context, before, want []ipam.Block) {
	var added []netip.Prefix
	for _, w := range want {
		if !slices.ContainsFunc(before, func(b ipam.Block) bool { return b.CIDR == w.CIDR }) {
			added = append(added, w.CIDR)
		}
	}
	a.mu.Lock()
	m := a.egress
	if len(added) > 0 {
		a.pendingExtra = added
	}
	a.mu.Unlock()
	if m != nil && len(added) > 0 {
		a.syncEgress(ctx, m)
	}
}

// writeReport writes the usage report (spec) when it changed: the blocks'
// capacity and use, the ADDs waiting, and the draining blocks drained
// here (each with the drain it answers). At most one write a second
// unless an ADD waits.
func (a *Agent) writeReport(ctx context.Context, u *unstructured.Unstructured, store *ipam.Store, since map[netip.Prefix]string) {
	a.mu.Lock()
	g := a.growth
	a.mu.Unlock()
	var blocks, drained []any
	total := int64(0)
	pending := false
	for _, b := range store.Usage() {
		blocks = append(blocks, map[string]any{"cidr": b.CIDR.String(), "capacity": int64(b.Capacity), "allocated": int64(b.Allocated)})
		total += int64(b.Allocated)
		if s, ok := since[b.CIDR]; ok && b.Draining {
			if store.Drained(b.CIDR) {
				drained = append(drained, map[string]any{"cidr": b.CIDR.String(), "drainingSince": s})
			} else if b.Allocated > 0 {
				pending = true
			}
		}
	}
	if pending {
		// Addresses of a draining block still cool down (or its pods go):
		// look again in a second rather than at the next resync.
		time.AfterFunc(time.Second, func() { a.signal(a.growthCh) })
	}
	g.mu.Lock()
	waiting := int64(g.waiting)
	g.mu.Unlock()
	spec := map[string]any{"blocks": blocks, "allocated": total, "waiting": waiting}
	if len(drained) > 0 {
		spec["drained"] = drained
	}
	cur, _, _ := unstructured.NestedMap(u.Object, "spec")
	g.mu.Lock()
	same := equality.Semantic.DeepEqual(normalize(cur), normalize(spec))
	soon := time.Since(g.lastWrite) < time.Second && waiting == 0
	g.mu.Unlock()
	if same {
		return
	}
	if soon {
		time.AfterFunc(time.Second, func() { a.signal(a.growthCh) })
		return
	}
	u = u.DeepCopy()
	u.Object["spec"] = spec
	if _, err := a.dyn.Resource(nodeBlocksGVR).Update(ctx, u, metav1.UpdateOptions{FieldManager: "aliasip-agent"}); err != nil {
		if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			klog.FromContext(ctx).Error(err, "Writing the NodeBlocks report")
		}
		return
	}
	g.mu.Lock()
	g.lastWrite = time.Now()
	g.mu.Unlock()
}

// normalize makes a spec read back from the API comparable with one
// built here (numbers as int64, empty lists absent).
func normalize(m map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		switch x := v.(type) {
		case []any:
			if len(x) == 0 {
				continue
			}
			var l []any
			for _, e := range x {
				if em, ok := e.(map[string]any); ok {
					l = append(l, normalize(em))
				} else {
					l = append(l, e)
				}
			}
			out[k] = l
		case int:
			out[k] = int64(x)
		case float64:
			out[k] = int64(x)
		default:
			out[k] = v
		}
	}
	return out
}

// allocateOrWait allocates, and when the node's blocks are full and it
// belongs to a growable range, reports the ADD as waiting and tries again
// each time the controller grants a block, for up to growthWait.
func (a *Agent) allocateOrWait(ctx context.Context, store *ipam.Store, req ipam.Request) (ipam.Allocation, error) {
	al, err := store.Allocate(req)
	a.mu.Lock()
	g := a.growth
	a.mu.Unlock()
	if !errors.Is(err, ipam.ErrExhausted) || g == nil {
		if err == nil && g != nil {
			a.signal(a.growthCh) // the report's counts changed
		}
		return al, err
	}
	if _, gerr := g.lister.Get(a.cfg.NodeName); gerr != nil {
		return al, err // not a node of a growable range
	}
	g.mu.Lock()
	g.waiting++
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.waiting--
		g.mu.Unlock()
		a.signal(a.growthCh)
	}()
	start := time.Now()
	deadline := time.NewTimer(growthWait)
	defer deadline.Stop()
	for {
		g.mu.Lock()
		grown := g.grown
		g.mu.Unlock()
		a.signal(a.growthCh)
		select {
		case <-ctx.Done():
			return al, err
		case <-deadline.C:
			return al, fmt.Errorf("%w (waited %v for another block: none was granted; see the node's NodeBlocks conditions)", err, growthWait)
		case <-grown:
		}
		if al, err = store.Allocate(req); !errors.Is(err, ipam.ErrExhausted) {
			a.metrics.GrowthWait.Observe(time.Since(start).Seconds())
			return al, err
		}
	}
}

// extraFabricRoutes are the routes to another node's extra blocks, as its
// NodeBlocks status (the controller's) grants them, via its InternalIP.
func (a *Agent) extraFabricRoutes(n *corev1.Node, via4 netip.Addr) []datapath.FabricRoute {
	a.mu.Lock()
	g := a.growth
	a.mu.Unlock()
	if g == nil || !via4.IsValid() {
		return nil
	}
	obj, err := g.lister.Get(n.Name)
	if err != nil {
		return nil
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil
	}
	// The object must be this Node's (a NodeBlocks of a deleted Node of
	// the same name is not).
	owned := slices.ContainsFunc(u.GetOwnerReferences(), func(r metav1.OwnerReference) bool { return r.Kind == "Node" && r.UID == n.UID })
	if !owned {
		return nil
	}
	bs, _ := grantedBlocks(u)
	var out []datapath.FabricRoute
	for _, b := range bs {
		out = append(out, datapath.FabricRoute{PodCIDR: b.CIDR, Via: via4})
	}
	return out
}

// grantedNow reads this node's granted blocks straight from the API (at
// start, before the informer runs): none when it has no NodeBlocks or the
// API does not serve them (404). Any other failure is an error: a
// recovery that went on without the extra blocks would hand their
// running pods' addresses out again.
func (a *Agent) grantedNow(ctx context.Context) ([]ipam.Block, error) {
	if a.dyn == nil {
		return nil, nil
	}
	u, err := a.dyn.Resource(nodeBlocksGVR).Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading this node's NodeBlocks to recover its extra blocks: %w", err)
	}
	bs, _ := grantedBlocks(u)
	return bs, nil
}
